"""Resampling to a target spacing, the nnU-Net way, with the world alignment kept exact.

The target grid keeps the image's axes and field-of-view centre and takes the exact target
spacing: an axis of n voxels at spacing s becomes m = round(n s / t) voxels at spacing t,
and new voxel centre i sits at old voxel coordinate ``offset + scale * i`` with
``scale = t / s`` and ``offset = (n - 1) / 2 - scale (m - 1) / 2``. The new affine is the
old one composed with that map, so the resampled image overlays the same world points.

Downsampling is anti-aliased: before interpolation, each axis shrunk by a factor d > 1 is
blurred with a Gaussian of sigma = sqrt(d^2 - 1) / 2 source voxels. Treating a voxel as a
blur of sigma 1/2 voxel, this brings the source's blur up to the target voxel's (d/2), so
detail finer than the new Nyquist limit fades instead of folding into false coarse
patterns (a 0.55 mm grating resampled from 0.2 to 0.4 mm keeps 12% of its amplitude
instead of reappearing as an 80% pattern of 1.46 mm; a 4 mm one keeps 97%). Label maps are
not blurred.

When one axis' spacing exceeds the finest by more than ``anisotropy_threshold`` (nnU-Net
uses 3), that axis is resampled on its own with a low order (0 by default), and the
in-plane axes slice by slice with the full order, so thick slices are never smeared
through a cubic spline across the gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from medtailor.spatial import antialias_sigma


@dataclass(frozen=True)
class GridMap:
    """Voxel map from a target grid to its source grid: old = offset + scale * new."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @property
    def ndim(self) -> int:
        return len(self.out_shape)

    def target_affine(self, affine: np.ndarray) -> np.ndarray:
        transform = np.eye(4)
        for axis in range(self.ndim):
            transform[axis, axis] = self.scale[axis]
            transform[axis, 3] = self.offset[axis]
        return np.asarray(affine, float) @ transform

    def boxes_to_target(self, corners: np.ndarray) -> np.ndarray:
        """Map (N, 2*ndim) edge boxes (x0, y0[, z0], x1, y1[, z1]) onto the target grid."""
        corners = np.asarray(corners, float).reshape(-1, 2 * self.ndim)
        scale = np.tile(self.scale, 2)
        offset = np.tile(self.offset, 2)
        # Edges are centre coordinates + 0.5: shift, invert the centre map, shift back.
        mapped = (corners - 0.5 - offset) / scale + 0.5
        upper = np.tile(self.out_shape, 2).astype(float)
        return np.clip(mapped, 0.0, upper)


def grid_map(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> GridMap:
    if len(shape) != len(spacing) or len(spacing) != len(target):
        raise ValueError(f"shape {shape}, spacing {spacing} and target {target} differ in length")
    out_shape, scale, offset = [], [], []
    for n, s, t in zip(shape, spacing, target, strict=True):
        m = max(1, int(np.floor(n * s / t + 0.5)))
        k = t / s
        out_shape.append(m)
        scale.append(k)
        offset.append((n - 1) / 2 - k * (m - 1) / 2)
    return GridMap(tuple(int(v) for v in shape), tuple(out_shape), tuple(scale), tuple(offset))


def lowres_axis(spacing: Sequence[float], threshold: float) -> int | None:
    """The axis to resample separately, or None when the image is not that anisotropic."""
    spacing = np.asarray(spacing, float)
    if len(spacing) < 3 or spacing.max() / spacing.min() <= threshold:
        return None
    return int(np.argmax(spacing))


def _affine_pass(array: np.ndarray, scale, offset, out_shape, order: int) -> np.ndarray:
    return ndimage.affine_transform(
        array,
        np.asarray(scale, float),
        offset=np.asarray(offset, float),
        output_shape=tuple(out_shape),
        order=order,
        mode="nearest",
        output=np.float32,
    )


def _along_axis(array: np.ndarray, gmap: GridMap, axis: int, order: int) -> np.ndarray:
    """Resample one axis only: nearest or linear by index arithmetic, higher orders by spline."""
    coords = gmap.offset[axis] + gmap.scale[axis] * np.arange(gmap.out_shape[axis])
    n = array.shape[axis]
    if order == 0:
        index = np.clip(np.floor(coords + 0.5).astype(int), 0, n - 1)
        return np.take(array, index, axis=axis)
    if order == 1:
        coords = np.clip(coords, 0, n - 1)
        lo = np.floor(coords).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        weight_shape = [1] * array.ndim
        weight_shape[axis] = -1
        w = (coords - lo).reshape(weight_shape).astype(np.float32)
        return (1 - w) * np.take(array, lo, axis=axis) + w * np.take(array, hi, axis=axis)
    scale = [1.0] * array.ndim
    offset = [0.0] * array.ndim
    out_shape = list(array.shape)
    scale[axis], offset[axis], out_shape[axis] = (
        gmap.scale[axis],
        gmap.offset[axis],
        gmap.out_shape[axis],
    )
    return _affine_pass(array, scale, offset, out_shape, order)


def resample_image(
    array: np.ndarray,
    gmap: GridMap,
    order: int = 3,
    separate_axis: int | None = None,
    order_separate: int = 0,
    progress: bool = False,
    antialias: bool = True,
) -> np.ndarray:
    """Resample an image onto ``gmap``'s target grid (float32), low-pass filtered first on
    the axes it downsamples when ``antialias``."""
    array = np.asarray(array, np.float32)
    sigma = antialias_sigma(gmap.scale)
    if antialias and sigma.any():
        array = ndimage.gaussian_filter(array, sigma, mode="nearest", truncate=4.0)
    if separate_axis is None:
        return _affine_pass(array, gmap.scale, gmap.offset, gmap.out_shape, order)
    plane_axes = [a for a in range(array.ndim) if a != separate_axis]
    plane_shape = [gmap.out_shape[a] for a in plane_axes]
    out = np.empty(
        [gmap.out_shape[a] if a != separate_axis else array.shape[a] for a in range(array.ndim)],
        np.float32,
    )
    indices = range(array.shape[separate_axis])
    for k in tqdm(
        indices, desc="resample: in-plane", unit="slice", disable=not progress, leave=False
    ):
        plane = np.take(array, k, axis=separate_axis)
        resampled = _affine_pass(
            plane,
            [gmap.scale[a] for a in plane_axes],
            [gmap.offset[a] for a in plane_axes],
            plane_shape,
            order,
        )
        index = [slice(None)] * array.ndim
        index[separate_axis] = k
        out[tuple(index)] = resampled
    return _along_axis(out, gmap, separate_axis, order_separate).astype(np.float32, copy=False)


def resample_labels(
    labels: np.ndarray,
    gmap: GridMap,
    mode: str = "linear_onehot",
    separate_axis: int | None = None,
    order_separate: int = 0,
) -> np.ndarray:
    """Resample a label map without inventing labels.

    ``nearest`` takes the nearest source voxel. ``linear_onehot`` interpolates each label's
    one-hot map linearly (nnU-Net's choice) and keeps, per voxel, the label whose map is
    largest, so only labels present in the neighbourhood can win. Each label is processed
    inside its own bounding box, which keeps many-label maps fast.
    """
    labels = np.asarray(labels)
    if mode == "nearest":
        return ndimage.affine_transform(
            labels,
            np.asarray(gmap.scale),
            offset=np.asarray(gmap.offset),
            output_shape=gmap.out_shape,
            order=0,
            mode="nearest",
        ).astype(labels.dtype)
    if mode != "linear_onehot":
        raise ValueError(f"unknown label mode {mode!r}")

    def onehot(mask: np.ndarray, sub: GridMap) -> np.ndarray:
        return resample_image(
            mask.astype(np.float32), sub, 1, separate_axis, order_separate, antialias=False
        )

    best = onehot(labels == 0, gmap)
    winner = np.zeros(gmap.out_shape, labels.dtype)
    objects = ndimage.find_objects(labels.astype(np.int64))
    for value, box in enumerate(objects, start=1):
        if box is None:
            continue
        # Pad the box by two voxels so the crop sees the label's edge fall to zero.
        lo = [max(s.start - 2, 0) for s in box]
        hi = [min(s.stop + 2, n) for s, n in zip(box, labels.shape, strict=True)]
        new_lo, new_hi = [], []
        for axis in range(labels.ndim):
            k, o = gmap.scale[axis], gmap.offset[axis]
            first = int(np.ceil((lo[axis] - 1 - o) / k))
            last = int(np.floor((hi[axis] - o) / k))
            new_lo.append(max(first, 0))
            new_hi.append(min(last + 1, gmap.out_shape[axis]))
        if any(b <= a for a, b in zip(new_lo, new_hi, strict=True)):
            continue
        sub = GridMap(
            tuple(h - lw for lw, h in zip(lo, hi, strict=True)),
            tuple(h - lw for lw, h in zip(new_lo, new_hi, strict=True)),
            gmap.scale,
            tuple(gmap.offset[a] + gmap.scale[a] * new_lo[a] - lo[a] for a in range(labels.ndim)),
        )
        crop = labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] == value
        score = onehot(crop, sub)
        region = tuple(slice(a, b) for a, b in zip(new_lo, new_hi, strict=True))
        better = score > best[region]
        best[region] = np.where(better, score, best[region])
        winner[region] = np.where(better, value, winner[region])
    return winner
