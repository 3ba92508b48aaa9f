"""Thin NIfTI I/O at the edges of the stages: atomic writes, explicit affines."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` on success.

    The rename is atomic (same folder), so a reader, or a rerun after a crash, never sees a
    half-written output; on error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty sibling of ``folder`` to write a stage's outputs into. On success it
    replaces ``folder`` (the previous outputs are deleted only then); on error it is
    removed and the previous outputs stay as they were."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging.", dir=folder.parent))
    try:
        yield staging
        previous = None
        if folder.exists():
            previous = staging.with_name(staging.name.replace(".staging.", ".previous."))
            os.replace(folder, previous)
        os.replace(staging, folder)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def save_torch(payload: object, path: str | Path) -> Path:
    """torch.save, atomically (checkpoints survive a kill mid-write)."""
    import torch

    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` with ``affine`` (voxel centres to RAS mm), sform and qform both set."""
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, float))
    image.header.set_sform(affine, code="scanner")
    image.header.set_qform(affine, code="scanner")
    image.header.set_xyzt_units("mm", "sec")
    with atomic_output(path) as tmp:
        nib.save(image, tmp)
    return path


def load_nifti(path: str | Path, dtype: type | None = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Return (array, affine); ``dtype=None`` keeps the stored type (for label maps)."""
    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj) if dtype is None else image.get_fdata(dtype=dtype)
    return np.asarray(array), np.asarray(image.affine, float)


def first_channel(array: np.ndarray, ndim: int) -> np.ndarray:
    """The first channel of a multi-channel image (channels last), the image itself
    otherwise: the detector and the patches read one channel."""
    return array[..., 0] if array.ndim > ndim else array


def compact_dtype(array: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer that fits (lossless and half the size), else float32."""
    if array.size and np.all(np.isfinite(array)):
        lo, hi = float(array.min()), float(array.max())
        if lo >= -32768 and hi <= 32767 and np.array_equal(array, np.rint(array)):
            return array.astype(np.int16)
    return array.astype(np.float32)
