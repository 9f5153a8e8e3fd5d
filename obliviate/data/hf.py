"""A Hugging Face dataset saved to disk (``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``), read with
``datasets.load_from_disk``. ``datasets`` is optional (``pip install datasets``, or the ``hf`` extra) and only
imported here, when such a directory is read.

A ``DatasetDict`` directory gives the split named after the set being loaded (``forget``, ``retain``...), or its
only split; pass a split's own folder (``DIR/forget``) to choose another. Rows are numbered from 1 in errors, as
parquet rows are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from obliviate.errors import InputError

DATASET_MARKERS = ("state.json", "dataset_info.json")  # Dataset.save_to_disk writes both
DICT_MARKER = "dataset_dict.json"  # DatasetDict.save_to_disk


def is_hf_dataset_dir(directory: Path) -> bool:
    return (directory / DICT_MARKER).is_file() or all((directory / m).is_file() for m in DATASET_MARKERS)


def hf_splits(directory: Path) -> list[str]:
    """The splits of a saved ``DatasetDict`` (without loading it); ``[]`` for a single ``Dataset``."""
    import json

    marker = directory / DICT_MARKER
    if not marker.is_file():
        return []
    try:
        splits = json.loads(marker.read_text(encoding="utf-8")).get("splits", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise InputError("malformed dataset_dict.json", path=marker) from None
    return [str(split) for split in splits]


def read_hf_rows(directory: str | Path, split: str | None = None) -> Iterator[tuple[int, dict]]:
    """``(row, record)`` of a saved dataset; ``split`` picks a ``DatasetDict``'s split (see the module doc)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a directory (a saved Hugging Face dataset is one)", path=directory)
    if not is_hf_dataset_dir(directory):
        raise InputError("not a saved Hugging Face dataset: no dataset_dict.json, or state.json and "
                         "dataset_info.json", path=directory)
    try:
        import datasets
    except ImportError:
        raise InputError("reading a saved Hugging Face dataset needs the datasets package: pip install datasets "
                         "(or pip install 'obliviate[hf]')", path=directory) from None
    splits = hf_splits(directory)
    if splits:
        if split in splits:
            chosen = split
        elif len(splits) == 1:
            chosen = splits[0]
        else:
            raise InputError(f"a dataset with splits {', '.join(splits)} and none named {split!r}: pass the split's "
                             "folder (e.g. DIR/forget)", path=directory)
        directory = directory / chosen
    try:
        dataset = datasets.load_from_disk(str(directory))
    except Exception as error:  # datasets raises several types for a damaged directory
        raise InputError(f"cannot load the dataset ({type(error).__name__}: {error})", path=directory) from None
    for number, record in enumerate(dataset, start=1):
        yield number, dict(record)
