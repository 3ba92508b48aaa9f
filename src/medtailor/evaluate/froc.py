"""FROC with study-wise averaging, AUFROC and the LUNA16 score (fracture NAS study).

Inputs are candidates (image, study, score, the lesions each one pinpoints) and the
lesions (id, study). A candidate *hits* a lesion when its IoU with one of the lesion's
boxes exceeds ``hit_iou``; it is a *false positive* when its best IoU with every ground
truth box of its image is below ``false_positive_iou``; in between it is ignored (neither).
A lesion counts once per study: it is detected at threshold t if any candidate of any
image of its study with score >= t hits it.

At threshold t: recall(t) = mean over studies with lesions of (lesions detected / lesions);
FPPI(t) = false positives with score >= t / number of images (all images, also those
without lesions). The curve is the step function "best recall reachable with at most f
false positives per image"; AUFROC is its integral between ``low`` and ``high`` FPPI
divided by (high - low), so it lies in [0, 1] and 1 means every lesion found before the
first false positive. Bounds between operating points are integrated exactly.
The LUNA16 score is the mean of that step function at 1/8, 1/4, 1/2, 1, 2, 4, 8 FPPI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LUNA16_FPPI = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class FrocData:
    """Flat arrays describing one evaluation set, built once and reused by the bootstrap."""

    scores: np.ndarray  # (C,) candidate scores
    candidate_study: np.ndarray  # (C,) study index
    false_positive: np.ndarray  # (C,) bool
    hits: list[np.ndarray]  # per candidate: indices of the lesions it hits
    lesion_study: np.ndarray  # (L,) study index
    image_study: np.ndarray  # (I,) study index of every image
    n_studies: int


def build_froc_data(
    candidates: pd.DataFrame, lesions: pd.DataFrame, images: pd.DataFrame
) -> FrocData:
    """``candidates``: score, study_id, false_positive (bool), hits (list of lesion ids);
    ``lesions``: lesion_id, study_id; ``images``: image_id, study_id (every evaluated image)."""
    studies = {s: i for i, s in enumerate(sorted(set(images["study_id"])))}
    lesion_index = {lid: i for i, lid in enumerate(lesions["lesion_id"])}
    unknown = set(lesions["study_id"]) - set(studies) | set(candidates["study_id"]) - set(studies)
    if unknown:
        raise ValueError(f"studies without images: {sorted(unknown)[:5]}")
    return FrocData(
        scores=candidates["score"].to_numpy(float),
        candidate_study=candidates["study_id"].map(studies).to_numpy(int),
        false_positive=candidates["false_positive"].to_numpy(bool),
        hits=[np.array([lesion_index[h] for h in hit], int) for hit in candidates["hits"]],
        lesion_study=lesions["study_id"].map(studies).to_numpy(int),
        image_study=images["study_id"].map(studies).to_numpy(int),
        n_studies=len(studies),
    )


def froc_curve(
    data: FrocData, study_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Operating points (fppi, recall) at every distinct score, by decreasing score.

    ``study_weights`` (n_studies,) re-weights studies (bootstrap draw counts).
    """
    weights = np.ones(data.n_studies) if study_weights is None else np.asarray(study_weights, float)
    n_images = weights[data.image_study].sum()
    lesions_per_study = np.bincount(data.lesion_study, minlength=data.n_studies)
    with_lesions = (lesions_per_study > 0) & (weights > 0)
    study_total = weights[with_lesions].sum()
    if n_images == 0 or study_total == 0:
        return np.array([0.0]), np.array([np.nan])

    # The score at which each lesion is first detected (its best hitting candidate).
    first_hit = np.full(len(data.lesion_study), -np.inf)
    for score, hit in zip(data.scores, data.hits, strict=True):
        if len(hit):
            first_hit[hit] = np.maximum(first_hit[hit], score)
    thresholds = np.unique(np.concatenate([data.scores, first_hit[np.isfinite(first_hit)]]))[::-1]

    fp_scores = np.sort(data.scores[data.false_positive])
    fp_weights = weights[data.candidate_study[data.false_positive]][
        np.argsort(data.scores[data.false_positive], kind="stable")
    ]
    fp_cum = np.concatenate([[0.0], np.cumsum(fp_weights[::-1])])  # FP weight with score >= t
    fp_at = fp_cum[len(fp_scores) - np.searchsorted(fp_scores, thresholds, side="left")]

    # Each lesion contributes weight/(lesions in its study) of its study's recall.
    share = np.where(
        lesions_per_study[data.lesion_study] > 0,
        weights[data.lesion_study] / lesions_per_study[data.lesion_study],
        0.0,
    )
    order = np.argsort(-first_hit, kind="stable")
    detected_scores = first_hit[order]
    cumulative = np.concatenate([[0.0], np.cumsum(share[order])])
    found = np.searchsorted(-detected_scores, -thresholds, side="right")
    recall = cumulative[found] / study_total
    return fp_at / n_images, recall


def best_recall_at(fppi: np.ndarray, recall: np.ndarray, budget: np.ndarray | float) -> np.ndarray:
    """Step function: best recall of the operating points with FPPI <= budget (0 if none)."""
    order = np.argsort(fppi, kind="stable")
    fppi, recall = np.asarray(fppi)[order], np.maximum.accumulate(np.asarray(recall)[order])
    index = np.searchsorted(fppi, np.atleast_1d(budget), side="right") - 1
    return np.where(index >= 0, recall[np.clip(index, 0, None)], 0.0)


def aufroc(fppi: np.ndarray, recall: np.ndarray, low: float, high: float) -> float:
    """Normalised area under the FROC step function between ``low`` and ``high`` FPPI."""
    if not high > low:
        raise ValueError(f"AUFROC bounds must satisfy low < high (got {low}, {high})")
    inside = np.sort(np.unique(np.concatenate([[low, high], fppi[(fppi > low) & (fppi < high)]])))
    heights = best_recall_at(fppi, recall, inside[:-1])
    return float(np.sum(heights * np.diff(inside)) / (high - low))


def luna16_score(fppi: np.ndarray, recall: np.ndarray) -> float:
    return float(np.mean(best_recall_at(fppi, recall, np.array(LUNA16_FPPI))))
