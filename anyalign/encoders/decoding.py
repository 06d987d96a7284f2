"""A Dataset that decodes raw inputs in DataLoader workers and turns decode failures into records.

Long extraction/embedding runs must never die on one corrupt file: each item comes back as
`(index, decoded, None)` or `(index, None, "reason")`, and the caller counts and lists the failures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset


class SafeDecode(Dataset):
    """`load(values[i])` per item; exceptions of the given types become the item's error message."""

    def __init__(self, values: Sequence[Any], load: Callable[[Any], Any],
                 errors: tuple[type[BaseException], ...] = (Exception,),
                 describe: Callable[[int, BaseException], str] | None = None) -> None:
        """`describe(i, error)` words a failure (default: `"Type: message"`); it must be picklable for workers."""
        self.values, self.load, self.errors, self.describe = values, load, errors, describe

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        try:
            return i, self.load(self.values[i]), None
        except self.errors as e:
            return i, None, self.describe(i, e) if self.describe is not None else f"{type(e).__name__}: {e}"
