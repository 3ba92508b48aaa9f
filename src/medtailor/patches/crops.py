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


PADDING_MODES = {"edge": "nearest", "zero": "constant"}


def extract_patch(
    image: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    size: tuple[int, ...],
    padding: str = "edge",
) -> np.ndarray:
    """Sample the region [low, high) (voxel edges) on a ``size`` grid, linearly.

    Where the region leaves the image, ``padding`` ``edge`` repeats the image's border
    voxels and ``zero`` fills zeros. Edge is the default: a zero band marks "this candidate
    is at the image border", a cue that has nothing to do with a lesion, and classifiers
    learn it when false positives gather at the borders (on the synthetic radiographs they
    do, and Grad-CAM then pointed at the band instead of the fracture: docs/stages.md).
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
        mode=PADDING_MODES[padding],
        cval=0.0,
        output=np.float32,
    )


def box_in_patch(
    box: np.ndarray, low: np.ndarray, high: np.ndarray, size: tuple[int, ...]
) -> np.ndarray:
    """Edges of ``box`` (image voxel edges, lows then highs) in the pixel edges of the patch
    sampled from the region [low, high) onto a ``size`` grid, as ``extract_patch`` samples it."""
    ndim = len(size)
    box, low, high = (np.asarray(v, float) for v in (box, low, high))
    scale = np.asarray(size, float) / (high - low)
    return np.concatenate([(box[:ndim] - low) * scale, (box[ndim:] - low) * scale])
