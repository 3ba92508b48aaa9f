"""IoU labelling on hand-made cases and against a brute-force reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.data.box_utils import box_iou

from medtailor.patches.labelling import (
    IGNORED,
    NEGATIVE,
    POSITIVE,
    best_match,
    clip_boxes,
    iou_matrix,
    label_by_iou,
)


def brute_force_iou(a, b) -> float:
    ndim = len(a) // 2
    inter = 1.0
    vol_a = vol_b = 1.0
    for k in range(ndim):
        inter *= max(0.0, min(a[k + ndim], b[k + ndim]) - max(a[k], b[k]))
        vol_a *= max(0.0, a[k + ndim] - a[k])
        vol_b *= max(0.0, b[k + ndim] - b[k])
    union = vol_a + vol_b - inter
    return inter / union if union > 0 else 0.0


def brute_force_labels(candidates, truths, shape, split, pos=0.5, neg=0.2):
    clipped_c = [np.clip(c, 0, np.tile(shape, 2)) for c in candidates]
    clipped_t = [np.clip(t, 0, np.tile(shape, 2)) for t in truths]
    labels, bests = [], []
    for c in clipped_c:
        best = max((brute_force_iou(c, t) for t in clipped_t), default=0.0)
        bests.append(best)
        if best > pos:
            labels.append(POSITIVE)
        elif best < neg:
            labels.append(NEGATIVE)
        else:
            labels.append(IGNORED if split == "train" else NEGATIVE)
    return np.array(bests), np.array(labels)


def test_exact_threshold_boundaries_are_in_between():
    truth = np.array([[0, 0, 10, 10]], float)
    # Candidate inside the truth with half its area: IoU exactly 0.5; a fifth: exactly 0.2.
    candidates = np.array([[0, 0, 10, 5], [0, 0, 10, 2], [0, 0, 10, 5.01], [0, 0, 10, 1.99]], float)
    best, _ = best_match(candidates, truth)
    np.testing.assert_array_equal(best[:2], [0.5, 0.2])
    assert list(label_by_iou(best, "train")) == [IGNORED, IGNORED, POSITIVE, NEGATIVE]
    # One rule outside training: validation (checkpoint and threshold choice) scores the
    # in-between band exactly as test does, as negatives.
    assert list(label_by_iou(best, "val")) == [NEGATIVE, NEGATIVE, POSITIVE, NEGATIVE]
    assert list(label_by_iou(best, "test")) == [NEGATIVE, NEGATIVE, POSITIVE, NEGATIVE]
    # Shifted off the integer grid the exact IoU is still 0.5, while MONAI's float32
    # box_iou rounds it above 0.5, which would make this in-between box a positive.
    truth = np.array([[16.792787652732176, 364.827723214972, 95.79278765273217, 535.827723214972]])
    half = truth.copy()
    half[0, 3] = 450.327723214972
    assert best_match(half, truth)[0][0] == 0.5
    assert float(box_iou(torch.tensor(half), torch.tensor(truth))[0, 0]) > 0.5


def test_no_ground_truth_makes_every_candidate_negative():
    best, index = best_match(np.array([[1, 1, 5, 5], [2, 2, 3, 3]], float), np.zeros((0, 4)))
    assert list(best) == [0, 0] and list(index) == [-1, -1]
    assert list(label_by_iou(best, "train")) == [NEGATIVE, NEGATIVE]


def test_several_overlapping_truths_pick_the_best():
    truths = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [100, 100, 110, 110]], float)
    best, index = best_match(np.array([[5, 0, 14, 10]], float), truths)
    assert index[0] == 1 and best[0] == pytest.approx(90 / 100)


def test_boxes_partly_outside_the_image_are_clipped_first():
    shape = (20, 20)
    truth = clip_boxes(np.array([[15, 15, 20, 20]], float), shape)
    candidate = clip_boxes(np.array([[15, 15, 25, 25]], float), shape)  # half outside
    best, _ = best_match(candidate, truth)
    assert best[0] == 1.0


def test_degenerate_boxes_have_zero_iou():
    truths = np.array([[5, 5, 5, 9], [0, 0, 4, 4]], float)
    candidates = np.array([[5, 5, 5, 9], [3, 3, 3, 3], [0, 0, 4, 4]], float)
    iou = iou_matrix(candidates, truths)
    np.testing.assert_array_equal(iou, [[0, 0], [0, 0], [0, 1]])


def test_3d_boxes():
    truth = np.array([[0, 0, 0, 4, 4, 4]], float)
    candidate = np.array([[0, 0, 0, 4, 4, 2], [2, 2, 2, 6, 6, 6]], float)
    np.testing.assert_allclose(iou_matrix(candidate, truth)[:, 0], [0.5, 8 / (64 + 64 - 8)])


@pytest.mark.parametrize("ndim,split", list(itertools.product([2, 3], ["train", "val", "test"])))
def test_random_cases_match_brute_force_and_monai_off_the_boundaries(ndim, split):
    rng = np.random.default_rng(ndim)
    shape = np.array([64] * ndim)
    for _ in range(20):

        def boxes(n):
            low = rng.uniform(-8, 60, (n, ndim))
            return np.hstack([low, low + rng.uniform(0, 20, (n, ndim))])

        candidates, truths = boxes(rng.integers(1, 30)), boxes(rng.integers(0, 4))
        best, _ = best_match(clip_boxes(candidates, shape), clip_boxes(truths, shape))
        labels = label_by_iou(best, split)
        expected_best, expected_labels = brute_force_labels(candidates, truths, shape, split)
        np.testing.assert_allclose(best, expected_best, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(labels, expected_labels)
        if len(truths):
            monai = box_iou(clip_boxes(candidates, shape), clip_boxes(truths, shape))
            np.testing.assert_allclose(
                iou_matrix(clip_boxes(candidates, shape), clip_boxes(truths, shape)),
                monai,
                atol=1e-5,
            )


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="must not exceed"):
        label_by_iou(np.array([0.3]), "train", positive_iou=0.2, negative_iou=0.5)
