"""Training crops for the detector: position, scale, in-plane rotation, flips and intensity,
with the boxes transformed alongside the pixels.

Coordinates are edge coordinates in voxels (voxel ``i`` spans ``[i, i + 1)``), as in
``boxes.parquet``. A crop maps an output point ``p`` to the image point
``centre + A (p - size / 2)`` with ``A = R(angle) / scale``: the crop shows a region of
``size / scale`` voxels, rotated in the plane of the first two axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random training transforms (``detector.<kind>.augment``); the defaults
    change nothing."""

    scale_range: tuple[float, float] = (1.0, 1.0)
    rotation_degrees: float = 0.0
    gamma_range: tuple[float, float] = (1.0, 1.0)
    contrast_range: tuple[float, float] = (1.0, 1.0)
    noise_std: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Augmentation:
        cfg = cfg or {}
        return cls(
            scale_range=tuple(float(v) for v in cfg.get("scale_range", (1.0, 1.0))),
            rotation_degrees=float(cfg.get("rotation_degrees", 0.0)),
            gamma_range=tuple(float(v) for v in cfg.get("gamma_range", (1.0, 1.0))),
            contrast_range=tuple(float(v) for v in cfg.get("contrast_range", (1.0, 1.0))),
            noise_std=float(cfg.get("noise_std", 0.0)),
        )

    @property
    def spatial(self) -> bool:
        return self.scale_range != (1.0, 1.0) or self.rotation_degrees > 0


def crop_matrix(ndim: int, scale: float, angle_degrees: float) -> np.ndarray:
    """``A``: crop (output) displacement -> image displacement."""
    matrix = np.eye(ndim) / scale
    theta = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix[:2, :2] = rotation / scale
    return matrix


def warp_image(
    image: np.ndarray, centre: np.ndarray, matrix: np.ndarray, size: np.ndarray
) -> np.ndarray:
    """The crop of ``size`` voxels whose point ``p`` is image point ``centre + A (p - size/2)``
    (linear interpolation, zero outside the image)."""
    # Voxel centres sit at index + 0.5 in edge coordinates, on both sides of the map.
    offset = centre + matrix @ (0.5 - size / 2) - 0.5
    return ndimage.affine_transform(
        image, matrix, offset=offset, output_shape=tuple(int(s) for s in size), order=1, cval=0.0
    ).astype(np.float32)


def warp_boxes(
    boxes: np.ndarray, centre: np.ndarray, matrix: np.ndarray, size: np.ndarray
) -> np.ndarray:
    """The boxes in crop coordinates (unclipped). A rotated box's bounding box is taken of
    the ellipse (ellipsoid) inscribed in it, not of its corners: lesions are round, and
    the corners' box would grow every rotated box by up to 40% per side at 45 degrees."""
    ndim = len(size)
    if not len(boxes):
        return boxes.reshape(0, 2 * ndim)
    inverse = np.linalg.inv(matrix)
    middle = (boxes[:, :ndim] + boxes[:, ndim:]) / 2
    half = (boxes[:, ndim:] - boxes[:, :ndim]) / 2
    new_middle = (middle - centre) @ inverse.T + size / 2
    # Extent of an axis-aligned ellipsoid with semi-axes ``half`` under the linear map:
    # along output axis j it is sqrt(sum_k (M_jk h_k)^2).
    new_half = np.sqrt(((half[:, None, :] * inverse[None, :, :]) ** 2).sum(-1))
    return np.concatenate([new_middle - new_half, new_middle + new_half], axis=1)


def keep_inside(boxes: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Boxes clipped to ``[0, limit]``, kept when at least half of their extent is inside."""
    ndim = len(limit)
    clipped = np.clip(boxes, 0, np.tile(limit, 2))
    extent = boxes[:, ndim:] - boxes[:, :ndim]
    kept = np.all((clipped[:, ndim:] - clipped[:, :ndim]) >= 0.5 * extent, axis=1)
    return clipped[kept]


def jitter_intensity(crop: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast about the mean, and Gaussian noise on a [0, 1] crop."""
    if aug.gamma_range != (1.0, 1.0):
        low, high = np.log(aug.gamma_range)
        crop = np.clip(crop, 0.0, 1.0) ** np.exp(rng.uniform(low, high))
    if aug.contrast_range != (1.0, 1.0):
        mean = float(crop.mean())
        crop = (crop - mean) * rng.uniform(*aug.contrast_range) + mean
    if aug.noise_std > 0:
        crop = crop + rng.normal(0.0, rng.uniform(0, aug.noise_std), crop.shape)
    return crop.astype(np.float32)


def training_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    patch_size: tuple[int, ...],
    rng: np.random.Generator,
    lesion_fraction: float,
    aug: Augmentation = Augmentation(),
) -> tuple[np.ndarray, np.ndarray]:
    """A patch of ``patch_size`` (zero where it leaves the image) and its boxes.

    With probability ``lesion_fraction`` the crop is centred near a random lesion. Then
    a random scale and in-plane rotation (``aug``), random flips along every axis, and
    intensity jitter. Boxes are kept when at least half of their extent is in the patch.
    """
    ndim = image.ndim
    shape = np.asarray(image.shape)
    size = np.asarray(patch_size)
    scale = rng.uniform(*aug.scale_range) if aug.spatial else 1.0
    angle = rng.uniform(-aug.rotation_degrees, aug.rotation_degrees) if aug.spatial else 0.0
    seen = size / scale  # the image region the crop shows
    if len(boxes) and rng.random() < lesion_fraction:
        box = boxes[rng.integers(len(boxes))]
        centre = (box[:ndim] + box[ndim:]) / 2 + rng.uniform(-0.25, 0.25, ndim) * seen
    else:
        centre = rng.uniform(0, 1, ndim) * shape
    start = np.clip(np.round(centre - seen / 2), 0, np.maximum(shape - seen, 0))
    if aug.spatial:
        centre = start + seen / 2
        matrix = crop_matrix(ndim, scale, angle)
        crop = warp_image(image, centre, matrix, size)
        out = keep_inside(warp_boxes(boxes, centre, matrix, size), size)
    else:  # a plain copy: no interpolation
        start = start.astype(int)
        crop = np.zeros(tuple(size), np.float32)
        stop = np.minimum(start + size, shape)
        region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        crop[tuple(slice(0, b - a) for a, b in zip(start, stop, strict=True))] = image[region]
        out = keep_inside(boxes - np.tile(start, 2), np.minimum(size, stop - start))
    for axis in range(ndim):
        if rng.random() < 0.5:
            crop = np.flip(crop, axis)
            lo, hi = out[:, axis].copy(), out[:, axis + ndim].copy()
            out[:, axis], out[:, axis + ndim] = size[axis] - hi, size[axis] - lo
    return jitter_intensity(np.ascontiguousarray(crop), aug, rng), out
