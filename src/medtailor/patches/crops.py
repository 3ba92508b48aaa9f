"""Cropping a candidate with context and resampling it to the fixed patch size."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medtailor.spatial import antialias_sigma


def context_region(box: np.ndarray, context: float, square: bool) -> tuple[np.ndarray, np.ndarray]:
    """Edges (low, high) of the crop: the box grown by ``context`` x its size on each side,
    then, when ``square``, grown to its longest side so the patch is not distorted."""
    ndim = len(box) // 2
    low, high = np.asarray(box[:ndim], float), np.asarray(box[ndim:], float)
    centre = (low + high) / 2
    extent = np.maximum(high - low, 1.0) * (1 + 2 * context)
    if square:
        extent = np.full(ndim, extent.max())
    return centre - extent / 2, centre + extent / 2


def extract_patch(
    image: np.ndarray, low: np.ndarray, high: np.ndarray, size: tuple[int, ...]
) -> np.ndarray:
    """Sample the region [low, high) (voxel edges) on a ``size`` grid, linearly, zero outside.

    Downsampled axes are low-pass filtered first (the resample stage's anti-aliasing
    Gaussian for a shrink factor of ``step``) so the patch does not alias; only a margin
    around the region is filtered.
    """
    size_arr = np.asarray(size, float)
    step = (high - low) / size_arr
    sigma = antialias_sigma(tuple(step))
    margin = np.ceil(3 * sigma + 2).astype(int)
    start = np.clip(np.floor(low).astype(int) - margin, 0, np.asarray(image.shape))
    stop = np.clip(np.ceil(high).astype(int) + margin, 0, np.asarray(image.shape))
    if np.any(stop <= start):
        return np.zeros(size, np.float32)
    region = np.asarray(
        image[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))], np.float32
    )
    if np.any(sigma > 0):
        region = ndimage.gaussian_filter(region, sigma, mode="nearest")
    # Output voxel j samples the region at centre coordinate low + (j + 0.5) step - 0.5.
    offset = low + 0.5 * step - 0.5 - start
    return ndimage.affine_transform(
        region,
        step,
        offset=offset,
        output_shape=tuple(size),
        order=1,
        mode="constant",
        cval=0.0,
        output=np.float32,
    )
