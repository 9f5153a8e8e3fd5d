"""Errors that reach the user as one line.

``InputError`` is raised at the edge (data files, model directories, options) and names where the problem is:
file, line and field when they are known. The CLI prints ``str(error)`` and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: a file, a line of it, a field, or an option."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path if self.line is None else f"{self.path}:{self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class CollapsedModelError(Exception):
    """An unlearned model's utility fell below the collapse gate."""
