"""Labelling detector candidates by their best IoU with the ground truth.

Rules (thresholds from params ``patches``): IoU > positive_iou is positive (1);
IoU < negative_iou is negative (0); positive_iou >= IoU >= negative_iou is "in between":
ignored (-1) in the train split only (the fracture study's rule: ambiguous crops do not
teach the classifier), negative (0) in validation and test alike, so the split that
chooses the checkpoint and the threshold scores every candidate the detector hands to the
classifier exactly as the test split does (and as FROC counts them: a candidate that hits
no lesion is a false positive). Both bounds of the in-between band are inclusive: IoU
exactly 0.5 or exactly 0.2 is in between.

IoU is computed here in float64 rather than with ``monai.data.box_utils.box_iou``, which
works in float32 (and divides by ``union + eps``): an IoU of exactly 0.5 comes out as
0.49999994 or 0.50000006 depending on the coordinates, so labels at the documented
boundaries would depend on rounding. Away from the boundaries both agree (tested).
Boxes are clipped to the image first; a box with no extent has IoU 0 with everything.
"""

from __future__ import annotations

import numpy as np

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


def clip_boxes(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Clip (N, 2*ndim) edge boxes to the image extent [0, shape]."""
    boxes = np.asarray(boxes, float).reshape(-1, 2 * len(shape))
    upper = np.tile(np.asarray(shape, float), 2)
    return np.clip(boxes, 0.0, upper)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 2d) with every box in ``b`` (M, 2d), 2D or 3D, float64."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ndim = a.shape[1] // 2
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    low = np.maximum(a[:, None, :ndim], b[None, :, :ndim])
    high = np.minimum(a[:, None, ndim:], b[None, :, ndim:])
    intersection = np.prod(np.clip(high - low, 0.0, None), axis=-1)
    volume_a = np.prod(np.clip(a[:, ndim:] - a[:, :ndim], 0.0, None), axis=-1)
    volume_b = np.prod(np.clip(b[:, ndim:] - b[:, :ndim], 0.0, None), axis=-1)
    union = volume_a[:, None] + volume_b[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, 0.0)
    return iou


def best_match(candidates: np.ndarray, truths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of each candidate and the index of that ground truth (-1 when there is none)."""
    iou = iou_matrix(candidates, truths)
    if iou.shape[1] == 0:
        return np.zeros(len(candidates)), np.full(len(candidates), -1)
    index = np.argmax(iou, axis=1)
    best = iou[np.arange(len(candidates)), index]
    return best, np.where(best > 0, index, -1)


def label_by_iou(
    best_iou: np.ndarray, split: str, positive_iou: float = 0.5, negative_iou: float = 0.2
) -> np.ndarray:
    """Labels 1/0/-1 from best IoUs, with the in-between band ignored in training only."""
    if negative_iou > positive_iou:
        raise ValueError(
            f"negative_iou ({negative_iou}) must not exceed positive_iou ({positive_iou})"
        )
    best_iou = np.asarray(best_iou, float)
    labels = np.full(best_iou.shape, IGNORED if split == "train" else NEGATIVE, dtype=np.int8)
    labels[best_iou > positive_iou] = POSITIVE
    labels[best_iou < negative_iou] = NEGATIVE
    return labels
