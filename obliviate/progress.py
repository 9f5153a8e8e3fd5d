"""Progress bars for every long step (tqdm on stderr), silenced with OBLIVIATE_PROGRESS=0 or desc=None."""

from __future__ import annotations

import contextlib
import os


def enabled() -> bool:
    return os.environ.get("OBLIVIATE_PROGRESS", "1") not in ("0", "false", "no")


def progress_bar(total: int | None = None, desc: str | None = None, unit: str = "it"):
    if desc is None or not enabled():
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


class _NullBar(contextlib.AbstractContextManager):
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __exit__(self, *exc) -> None:
        return None
