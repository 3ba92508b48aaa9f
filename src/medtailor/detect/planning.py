"""Anchor shapes, pyramid levels and training crop planned from the training boxes (as
nnDetection plans them).

RetinaNet places, on pyramid level l, every base anchor shape scaled by 2**l. The plan picks
the base shapes (their aspect ratios by k-means on the boxes' log-shapes, their size by the
best mean IoU between each box and its closest anchor) and the levels the box sizes need,
so that a user's lesions, whatever their size and elongation, meet anchors that fit them;
and a training crop (also the sliding window) that holds the large lesions whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# Stage k of the backbone (ResNet layer k, timm feature k) has stride 2 ** (k + 1).
FIRST_STAGE, LAST_STAGE = 1, 4
# RetinaNet's anchors are 4 to 8 strides wide (32 px on the stride-8 level).
ANCHOR_STRIDES = 4
SIZE_PERCENTILE = 99


def input_divisor(returned_layers: list[int]) -> int:
    """What every input side must be a multiple of: stage k has stride 2 ** (k + 1) and the
    pyramid's pooled level doubles the coarsest, so each level's stride stays exact."""
    return 2 ** (max(returned_layers) + 2)


def box_extents(boxes: np.ndarray) -> np.ndarray:
    """(N, 2 * ndim) edge corners -> (N, ndim) positive extents."""
    boxes = np.asarray(boxes, float)
    ndim = boxes.shape[-1] // 2
    boxes = boxes.reshape(-1, 2 * ndim)
    extents = boxes[:, ndim:] - boxes[:, :ndim]
    return extents[np.all(extents > 0, axis=1)]


def centred_iou(extents: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes and anchors sharing a centre: (N, ndim) x (M, ndim) -> (N, M)."""
    overlap = np.prod(np.minimum(extents[:, None, :], anchors[None, :, :]), axis=2)
    union = np.prod(extents, axis=1)[:, None] + np.prod(anchors, axis=1)[None, :] - overlap
    return overlap / union


def anchor_set(base_shapes: np.ndarray, levels: int) -> np.ndarray:
    """Every anchor the detector places: each base shape on every level (x 2 ** level)."""
    return np.concatenate([base_shapes * 2.0**level for level in range(levels)])


def mean_best_iou(extents: np.ndarray, base_shapes: np.ndarray, levels: int) -> float:
    """How well the anchors fit the boxes: each box's best centred IoU, averaged."""
    return float(centred_iou(extents, anchor_set(base_shapes, levels)).max(axis=1).mean())


def aspect_shapes(extents: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` unit-volume shapes (product 1) that the boxes' shapes cluster around."""
    from sklearn.cluster import KMeans

    log_shapes = np.log(extents) - np.log(extents).mean(axis=1, keepdims=True)
    distinct = len(np.unique(np.round(log_shapes, 2), axis=0))
    k = max(1, min(count, distinct))
    if k == 1:
        centres = log_shapes.mean(axis=0, keepdims=True)
    else:
        centres = (
            KMeans(n_clusters=k, n_init=10, random_state=seed).fit(log_shapes).cluster_centers_
        )
    centres -= centres.mean(axis=1, keepdims=True)
    # Ordered by elongation along the first axis, so equal plans print equally.
    return np.exp(centres[np.argsort(centres[:, 0])])


def best_base_size(extents: np.ndarray, shapes: np.ndarray, levels: int) -> float:
    """The level-0 size whose anchors fit the boxes best (mean best IoU over a fine grid).

    The grid spans one octave around the smallest boxes: a base any smaller would only
    spend a level on anchors that no box needs."""
    sizes = np.exp(np.log(extents).mean(axis=1))
    smallest = np.percentile(sizes, 100 - SIZE_PERCENTILE)
    grid = np.geomspace(smallest / np.sqrt(2), smallest * np.sqrt(2), 256)
    scores = [mean_best_iou(extents, shapes * size, levels) for size in grid]
    return float(grid[int(np.argmax(scores))])


def plan_anchors(
    boxes: np.ndarray, shapes: int = 3, seed: int = 0, max_stage: int = LAST_STAGE
) -> dict[str, Any]:
    """Base anchor shapes, backbone stages (``returned_layers``) and the fit they reach.

    The finest returned stage has a stride of about a quarter of the base anchor; coarser
    stages are added (each level doubles the anchors) until the anchors reach the
    ``SIZE_PERCENTILE``-th percentile box size; the feature pyramid adds one pooled level.
    """
    extents = box_extents(boxes)
    if len(extents) == 0:
        raise ValueError("no training box to plan anchors from")
    unit = aspect_shapes(extents, shapes, seed)
    # Size first with every level available, then only with the levels kept.
    base = best_base_size(extents, unit, LAST_STAGE - FIRST_STAGE + 2)
    first = int(np.clip(np.floor(np.log2(base / ANCHOR_STRIDES)) - 1, FIRST_STAGE, max_stage))
    sizes = np.exp(np.log(extents).mean(axis=1))
    needed = int(np.ceil(np.log2(max(np.percentile(sizes, SIZE_PERCENTILE) / base, 1.0)))) + 1
    last = int(np.clip(first + needed - 2, first, max_stage))
    levels = last - first + 2
    base = best_base_size(extents, unit, levels)
    base_shapes = unit * base
    return {
        "base_anchor_shapes": np.round(base_shapes, 2).tolist(),
        "returned_layers": list(range(first, last + 1)),
        "levels": levels,
        "mean_best_iou": round(mean_best_iou(extents, base_shapes, levels), 4),
        "boxes": len(extents),
        "box_size_percentiles": {
            str(q): round(float(np.percentile(sizes, q)), 2) for q in (1, 5, 50, 95, 99)
        },
        "aspect_ratios": [round(float(s[0] / s[1]), 3) for s in unit] if unit.shape[1] > 1 else [],
    }


def plan_patch_size(
    boxes: np.ndarray, returned_layers: list[int], image_shapes: np.ndarray
) -> list[int]:
    """The training crop: along each axis, the ``SIZE_PERCENTILE``-th percentile box extent
    (the size the anchor levels are planned to reach), so that all but the largest lesions
    fit whole, rounded up to the network's input divisor; at least two cells of the coarsest
    level, and no larger than the median image (padded to the divisor), which a bigger crop
    would only pad."""
    extents = box_extents(boxes)
    if len(extents) == 0:
        raise ValueError("no training box to plan the crop from")
    divisor = input_divisor(returned_layers)
    needed = np.maximum(np.percentile(extents, SIZE_PERCENTILE, axis=0), 2 * divisor)
    largest = np.ceil(np.median(np.asarray(image_shapes, float), axis=0) / divisor) * divisor
    size = np.minimum(np.ceil(needed / divisor) * divisor, np.maximum(largest, divisor))
    return [int(v) for v in size]


def resolve_detector_config(
    cfg: Mapping[str, Any],
    training_boxes: list[np.ndarray],
    image_shapes: list[tuple[int, ...]],
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The detector configuration to build (``auto`` anchors and crop replaced by their
    plan) and the plan (None when both were given)."""
    resolved = dict(cfg)
    plan: dict[str, Any] = {}
    boxes = [b for b in training_boxes if len(b)]
    ndim = len(image_shapes[0]) if image_shapes else 2
    stacked = np.concatenate(boxes) if boxes else np.zeros((0, 2 * ndim))
    if resolved["base_anchor_shapes"] == "auto":
        plan = plan_anchors(stacked, seed=seed)
        resolved["base_anchor_shapes"] = plan["base_anchor_shapes"]
        resolved["returned_layers"] = plan["returned_layers"]
    if resolved["patch_size"] == "auto":
        layers = [int(v) for v in resolved["returned_layers"]]
        resolved["patch_size"] = plan_patch_size(stacked, layers, np.asarray(image_shapes))
        plan.update(patch_size=resolved["patch_size"], divisor=input_divisor(layers))
    return resolved, plan or None
