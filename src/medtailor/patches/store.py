"""The patch store: one memory-mapped array per (kind, split) plus an index table.

``<kind>_<split>.npy`` holds patches (N, *size) in the dtype of params; row ``r`` of it is
described by the index row with that kind, split and ``row``. Readers map the arrays
(``mmap_mode='r'``), so memory stays flat whatever the number of patches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.targets import CANDIDATE_TASK

INDEX = "index.parquet"
FINGERPRINT = "fingerprint.json"
TASK = "task.json"


def compute_fingerprint(root: Path) -> str:
    """sha256 over the index and every patch array: the identity of a store's content."""
    digest = hashlib.sha256()
    task = [root / TASK] if (root / TASK).is_file() else []
    for path in [root / INDEX, *task, *sorted(root.glob("*.npy"))]:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:16]


def write_fingerprint(root: Path) -> str:
    """Record the fingerprint once, when the store is written, so readers need not hash it."""
    value = compute_fingerprint(root)
    (root / FINGERPRINT).write_text(json.dumps({"sha256": value}) + "\n")
    return value


def write_task(root: Path, task: dict[str, Any]) -> None:
    """What the store's targets mean (``medtailor.targets``): task and class names."""
    (root / TASK).write_text(json.dumps(task) + "\n")


def array_path(root: Path, kind: str, split: str) -> Path:
    return root / f"{kind}_{split}.npy"


class PatchStore:
    """Read access to a patch store written by the patches stage."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.index = pd.read_parquet(self.root / INDEX)
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def array(self, kind: str, split: str) -> np.ndarray:
        key = (kind, split)
        if key not in self._arrays:
            self._arrays[key] = np.load(array_path(self.root, kind, split), mmap_mode="r")
        return self._arrays[key]

    def task(self) -> dict[str, Any]:
        """The classification task of the store (detector candidates: binary)."""
        path = self.root / TASK
        return json.loads(path.read_text()) if path.is_file() else dict(CANDIDATE_TASK)

    def fingerprint(self) -> str:
        """The content hash recorded by the patches stage (computed for older stores)."""
        recorded = self.root / FINGERPRINT
        if recorded.is_file():
            return str(json.loads(recorded.read_text())["sha256"])
        return compute_fingerprint(self.root)

    def rows(self, kind: str, split: str) -> pd.DataFrame:
        chosen = self.index[(self.index["kind"] == kind) & (self.index["split"] == split)]
        return chosen.sort_values("row")

    def __len__(self) -> int:
        return len(self.index)

    def iter_batches(
        self, kind: str, split: str, batch_size: int
    ) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        """Contiguous batches (copies of the mapped rows) with their index rows."""
        array, rows = self.array(kind, split), self.rows(kind, split)
        for start in range(0, len(rows), batch_size):
            part = rows.iloc[start : start + batch_size]
            yield np.asarray(array[part["row"].to_numpy()]), part


class PatchWriter:
    """Allocates the memory-mapped arrays up front and fills them row by row."""

    def __init__(
        self,
        root: Path,
        counts: dict[tuple[str, str], int],
        sizes: dict[str, tuple[int, ...]],
        dtype: str,
    ):
        self.arrays = {
            key: np.lib.format.open_memmap(
                array_path(root, *key), mode="w+", dtype=np.dtype(dtype), shape=(n, *sizes[key[0]])
            )
            for key, n in counts.items()
        }

    def write(self, kind: str, split: str, row: int, patch: np.ndarray) -> None:
        self.arrays[(kind, split)][row] = patch

    def close(self) -> None:
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()
