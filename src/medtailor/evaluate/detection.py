"""Detection-level evaluation: candidates re-scored by a classifier, FROC by study."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medtailor.evaluate.froc import aufroc, build_froc_data, froc_curve, luna16_score
from medtailor.evaluate.stats import BootstrapInterval, cluster_weights, percentile_interval
from medtailor.patches.labelling import clip_boxes, iou_matrix
from medtailor.tables import box_columns

IN_BETWEEN_RULES = ("false_positive", "ignored")


def candidate_hits(
    candidates: pd.DataFrame,
    truths: pd.DataFrame,
    shapes: pd.Series,
    hit_iou: float,
    false_positive_iou: float,
    in_between: str = "false_positive",
) -> pd.DataFrame:
    """Add to each candidate the lesions it pinpoints (IoU > hit_iou with one of their boxes)
    and whether it is a false positive.

    ``in_between`` is the FROC convention for a candidate that hits no lesion but overlaps
    one: ``false_positive`` (default, the fracture study's and the patch labels' rule: every
    candidate that hits no lesion is a false positive, as it is a negative for AUC) or
    ``ignored`` (neither hit nor false positive when its best IoU is at least
    ``false_positive_iou``).
    """
    if in_between not in IN_BETWEEN_RULES:
        raise ValueError(f"in_between must be one of {IN_BETWEEN_RULES}, got {in_between!r}")
    if candidates.empty:
        return candidates.assign(hits=pd.Series(dtype=object), false_positive=pd.Series(dtype=bool))
    hits, false_positive = [], []
    grouped = dict(tuple(truths.groupby("image_id")))
    for image_id, group in candidates.groupby("image_id", sort=False):
        shape = tuple(int(v) for v in shapes[image_id])
        columns = box_columns(len(shape))
        gt = grouped.get(image_id)
        if gt is None or gt.empty:
            hits.extend([[]] * len(group))
            false_positive.extend([True] * len(group))
            continue
        overlap = iou_matrix(
            clip_boxes(group[columns].to_numpy(float), shape),
            clip_boxes(gt[columns].to_numpy(float), shape),
        )
        lesion_ids = gt["lesion_id"].to_numpy()
        hit = [sorted(set(lesion_ids[row > hit_iou])) for row in overlap]
        hits.extend(hit)
        missed = np.array([not h for h in hit])
        if in_between == "ignored":
            missed &= overlap.max(axis=1) < false_positive_iou
        false_positive.extend(missed.tolist())
    ordered = pd.concat([g for _, g in candidates.groupby("image_id", sort=False)])
    return ordered.assign(hits=hits, false_positive=false_positive)


def aufroc_of(
    candidates: pd.DataFrame,
    lesions: pd.DataFrame,
    images: pd.DataFrame,
    score_column: str,
    cfg: dict[str, Any],
) -> float | None:
    """AUFROC of one set (no interval): the search's fitness. None without lesions."""
    data = build_froc_data(candidates.assign(score=candidates[score_column]), lesions, images)
    fppi, recall = froc_curve(data)
    low, high = (float(v) for v in cfg["aufroc_fppi"])
    return aufroc(fppi, recall, low, high) if np.isfinite(recall).all() else None


def froc_summary(
    candidates: pd.DataFrame,
    lesions: pd.DataFrame,
    images: pd.DataFrame,
    score_column: str,
    cfg: dict[str, Any],
    replicates: int,
    level: float,
    seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """AUFROC (with a patient-bootstrap CI), LUNA16 score, and the curve as a table.

    ``images`` carries ``patient_id``: the bootstrap draws patients (each study belongs to
    one), the unit every other interval of the report resamples; replicates without a
    lesion (AUFROC undefined) are counted, not silently dropped.
    """
    data = build_froc_data(candidates.assign(score=candidates[score_column]), lesions, images)
    low, high = (float(v) for v in cfg["aufroc_fppi"])
    fppi, recall = froc_curve(data)
    study_patient = (
        images.drop_duplicates("study_id").set_index("study_id")["patient_id"].sort_index()
    )
    rng = np.random.default_rng(seed)
    draws = cluster_weights(study_patient.to_numpy(), replicates, rng)
    samples = np.full(replicates, np.nan)
    for replicate, weights in enumerate(draws):
        f, r = froc_curve(data, weights)
        if np.isfinite(r).all():
            samples[replicate] = aufroc(f, r, low, high)
    interval = BootstrapInterval(*percentile_interval(samples, level), samples)
    summary = {
        "aufroc": aufroc(fppi, recall, low, high) if np.isfinite(recall).all() else None,
        **interval.as_dict("aufroc"),
        # The fracture NAS study's Table 1 reports 90% intervals (same replicates).
        "aufroc_ci_90": list(percentile_interval(samples, 0.90)),
        "luna16": luna16_score(fppi, recall) if np.isfinite(recall).all() else None,
        "lesions": len(lesions),
        "studies_with_lesions": int(lesions["study_id"].nunique()),
        "images": len(images),
    }
    return summary, pd.DataFrame({"fppi": fppi, "recall": recall})


def first_hit_ranks(candidates: pd.DataFrame, lesions: pd.DataFrame) -> np.ndarray:
    """Per lesion (in ``lesions`` order): the best score rank, within its image, of a
    candidate that hits it (1 = the image's best candidate; inf when none does).

    ``candidates`` come from :func:`candidate_hits` (``hits``: lesions each pinpoints).
    """
    first_rank: dict[Any, int] = {}
    if not candidates.empty:
        ranked = candidates.assign(
            rank=candidates.groupby("image_id")["score"].rank(method="first", ascending=False)
        )
        for rank, hit in zip(ranked["rank"].astype(int), ranked["hits"], strict=True):
            for lesion in hit:
                first_rank[lesion] = min(rank, first_rank.get(lesion, rank))
    return np.array([first_rank.get(lesion, np.inf) for lesion in lesions["lesion_id"]], float)


def recall_by_candidates(
    candidates: pd.DataFrame, lesions: pd.DataFrame, max_per_image: int
) -> pd.DataFrame:
    """Lesion recall when each image keeps only its ``k`` best-scored candidates, for
    ``k = 1..max_per_image``: where the curve flattens, more candidates stop helping, and
    its plateau bounds what any classifier re-scoring the candidates can find."""
    ks = np.arange(1, max(1, int(max_per_image)) + 1)
    if lesions.empty:
        return pd.DataFrame({"candidates_per_image": ks, "recall": np.nan})
    ranks = first_hit_ranks(candidates, lesions)
    recall = (ranks[None, :] <= ks[:, None]).mean(axis=1)
    return pd.DataFrame({"candidates_per_image": ks, "recall": recall})
