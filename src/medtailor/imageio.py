"""Thin NIfTI I/O at the edges of the stages: atomic writes, explicit affines."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` (same folder, so the final rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` with ``affine`` (voxel centres to RAS mm), sform and qform both set."""
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, float))
    image.header.set_sform(affine, code="scanner")
    image.header.set_qform(affine, code="scanner")
    image.header.set_xyzt_units("mm", "sec")
    tmp = atomic_path(path)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_nifti(path: str | Path, dtype: type | None = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Return (array, affine); ``dtype=None`` keeps the stored type (for label maps)."""
    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj) if dtype is None else image.get_fdata(dtype=dtype)
    return np.asarray(array), np.asarray(image.affine, float)


def compact_dtype(array: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer that fits (lossless and half the size), else float32."""
    if array.size and np.all(np.isfinite(array)):
        lo, hi = float(array.min()), float(array.max())
        if lo >= -32768 and hi <= 32767 and np.array_equal(array, np.rint(array)):
            return array.astype(np.int16)
    return array.astype(np.float32)
