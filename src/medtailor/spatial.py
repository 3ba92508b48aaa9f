"""World-coordinate geometry shared by every stage.

Conventions (see docs/contracts.md):
- Arrays are indexed (x, y[, z]): axis 0 runs along image columns, axis 1 along rows,
  axis 2 along slices, the NIfTI way. An affine maps voxel *centres* to world mm.
- World coordinates are NIfTI RAS+. DICOM patient coordinates are LPS+, so a DICOM
  affine is flipped in x and y before it is stored.
- Boxes are corner format on voxel *edges*: voxel i spans [i, i+1), so a box over voxels
  10..19 is (10, 20). Its centre-based coordinates are edges - 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dicom_affine_ras(
    first_position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_step: Sequence[float],
) -> np.ndarray:
    """Affine of a DICOM slice stack indexed (column, row, slice), in RAS+.

    ``orientation`` is ImageOrientationPatient: the direction of increasing column
    index, then of increasing row index. ``pixel_spacing`` is DICOM PixelSpacing:
    (spacing between rows, spacing between columns). ``slice_step`` is the LPS vector
    from one slice's ImagePositionPatient to the next one's.
    """
    row_dir = np.asarray(orientation[:3], float)  # moves along a row: column index
    col_dir = np.asarray(orientation[3:6], float)  # moves along a column: row index
    lps = np.eye(4)
    lps[:3, 0] = row_dir * float(pixel_spacing[1])
    lps[:3, 1] = col_dir * float(pixel_spacing[0])
    lps[:3, 2] = np.asarray(slice_step, float)
    lps[:3, 3] = np.asarray(first_position, float)
    return LPS_TO_RAS @ lps


def planar_affine(pixel_spacing_xy: Sequence[float]) -> np.ndarray:
    """Affine of a projection radiograph: detector-plane mm, x along columns, y along rows."""
    affine = np.eye(4)
    affine[0, 0], affine[1, 1] = float(pixel_spacing_xy[0]), float(pixel_spacing_xy[1])
    return affine


def affine_spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :ndim], axis=0))


def orientation_code(affine: np.ndarray, ndim: int) -> str:
    """Axis codes such as 'LPS' or 'RAS' (nibabel's); 'planar' for radiographs, whose
    detector-plane frame has no patient orientation."""
    if ndim == 2:
        return "planar"
    return "".join(nib.aff2axcodes(np.asarray(affine)))


def voxel_to_world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Map (N, ndim) voxel-centre coordinates to (N, 3) world mm."""
    index = np.atleast_2d(np.asarray(index, float))
    padded = np.zeros((index.shape[0], 3))
    padded[:, : index.shape[1]] = index
    return padded @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def world_to_voxel(affine: np.ndarray, world: np.ndarray, ndim: int = 3) -> np.ndarray:
    """Map (N, 3) world mm to (N, ndim) voxel-centre coordinates."""
    world = np.atleast_2d(np.asarray(world, float))
    inverse = np.linalg.inv(np.asarray(affine))
    return (world @ inverse[:3, :3].T + inverse[:3, 3])[:, :ndim]


def antialias_sigma(scale: Sequence[float]) -> np.ndarray:
    """Gaussian sigma (source voxels) per axis before shrinking it by d = target / source
    spacing: sqrt(d^2 - 1) / 2 where d > 1, else 0. A voxel counts as a blur of sigma 1/2
    voxel, so this brings the source up to the target voxel's d/2 (see resample)."""
    d = np.asarray(scale, float)
    return np.where(d > 1, np.sqrt(np.maximum(d**2 - 1, 0.0)) / 2, 0.0)
