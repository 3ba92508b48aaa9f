"""NIfTI images and label maps: validation and alignment of a label map to its image grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medtailor.ingest.audit import Rejected

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path | str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _squeeze_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def load_nifti_checked(path: Path, integer: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load a 2D/3D NIfTI, or a 4D one as a multi-channel volume (channels last, as the
    Medical Segmentation Decathlon stores its MR modalities; not for label maps), and check
    it is usable; raise Rejected with the reason otherwise."""
    try:
        image = nib.load(str(path))
        shape = tuple(int(v) for v in image.shape)
    except Exception as exc:  # nibabel raises several types on corrupt headers
        raise Rejected("not readable as NIfTI", f"{type(exc).__name__}: {exc}") from exc
    if not shape or any(v == 0 for v in shape):
        raise Rejected(f"zero-sized axis in shape {shape}")
    squeezed = _squeeze_trailing(shape)
    if len(squeezed) > (3 if integer else 4):
        raise Rejected(
            f"{len(squeezed)}-D {'label map' if integer else 'image'} {shape}: only 2D, 3D "
            + ("" if integer else "and 4D (channels last) ")
            + "images are ingested"
        )
    if len(squeezed) < 2:
        raise Rejected(f"{len(squeezed)}-D image {shape}: not an image")
    affine = np.asarray(image.affine, float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise Rejected("affine is singular or not finite: the image has no usable geometry")
    try:
        raw = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise Rejected("cannot read voxel data", f"{type(exc).__name__}: {exc}") from exc
    data = np.asarray(raw).reshape(squeezed)
    if np.issubdtype(data.dtype, np.floating) or not integer:
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(squeezed)
        bad = ~np.isfinite(data)
        if bad.any():
            nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
            raise Rejected(f"voxel data has {nan} NaN and {inf} infinite value(s)")
    if integer:
        data = checked_labels(data)
    return data, affine


def checked_labels(data: np.ndarray) -> np.ndarray:
    """A label map's values as int32: finite, integer-valued and non-negative, or Rejected."""
    if not np.all(np.isfinite(data)):
        raise Rejected("label map has NaN or infinite values")
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise Rejected("label map is not integer-valued")
    if rounded.min() < 0:
        raise Rejected("label map has negative labels")
    return rounded.astype(np.int32)


def align_label(
    label: np.ndarray,
    label_affine: np.ndarray,
    image_shape: tuple[int, ...],
    image_affine: np.ndarray,
) -> tuple[np.ndarray, str]:
    """Put a label map on its image's voxel grid by world coordinates (nearest neighbour).

    Returns the aligned map and how: ``exact`` when the grids differ only by axis flips or
    permutations (no interpolation happens), ``nearest`` otherwise.
    """
    ndim = len(image_shape)
    if label.ndim != ndim:
        raise Rejected(f"label map is {label.ndim}-D but its image is {ndim}-D")
    image_to_label = np.linalg.inv(label_affine) @ image_affine
    matrix = image_to_label[:ndim, :ndim]
    offset = image_to_label[:ndim, 3]
    aligned = ndimage.affine_transform(
        label, matrix, offset=offset, output_shape=image_shape, order=0, mode="constant", cval=0
    )
    signed_permutation = np.allclose(np.abs(matrix).sum(axis=0), 1, atol=1e-4) and np.allclose(
        np.abs(matrix).max(axis=0), 1, atol=1e-4
    )
    integral = np.allclose(offset, np.round(offset), atol=1e-3)
    how = "exact" if signed_permutation and integral else "nearest"
    if label.any() and not aligned.any():
        raise Rejected("label map does not overlap its image in world coordinates")
    return aligned.astype(label.dtype), how
