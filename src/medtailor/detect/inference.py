"""Running a trained detector on whole images, and the recall of its candidates."""

from __future__ import annotations

import numpy as np
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.data.box_utils import box_iou


@torch.no_grad()
def predict_boxes(
    detector: RetinaNetDetector, image: np.ndarray, patch_size: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate boxes (edge corners, voxel grid of ``image``) and scores in [0, 100]."""
    detector.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]
    device = next(detector.parameters()).device
    larger = any(n > p for n, p in zip(image.shape, patch_size, strict=True))
    output = detector([tensor.to(device)], use_inferer=larger)[0]
    boxes = output["boxes"].detach().cpu().numpy().astype(float)
    scores = output["labels_scores"].detach().cpu().numpy().astype(float) * 100.0
    order = np.argsort(-scores, kind="stable")
    return boxes[order].reshape(-1, 2 * image.ndim), scores[order]


def lesion_recall(
    truths: list[np.ndarray],
    candidates: list[tuple[np.ndarray, np.ndarray]],
    min_score: float,
    iou: float,
) -> tuple[int, int]:
    """(found, total): truth boxes matched by a candidate with score > min_score and IoU > iou."""
    found = total = 0
    for truth, (boxes, scores) in zip(truths, candidates, strict=True):
        total += len(truth)
        kept = boxes[scores > min_score]
        if len(truth) and len(kept):
            found += int((box_iou(truth, kept).max(axis=1) > iou).sum())
    return found, total
