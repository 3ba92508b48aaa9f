"""Detection-level evaluation: candidates re-scored by a classifier, FROC by study."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medtailor.evaluate.froc import aufroc, build_froc_data, froc_curve, luna16_score
from medtailor.evaluate.stats import cluster_weights, percentile_interval
from medtailor.patches.labelling import clip_boxes, iou_matrix
from medtailor.tables import box_columns


def candidate_hits(
    candidates: pd.DataFrame,
    truths: pd.DataFrame,
    shapes: pd.Series,
    hit_iou: float,
    false_positive_iou: float,
) -> pd.DataFrame:
    """Add to each candidate the lesions it pinpoints (IoU > hit_iou with one of their boxes)
    and whether it is a false positive (IoU < false_positive_iou with every box)."""
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
        hits.extend([sorted(set(lesion_ids[row > hit_iou])) for row in overlap])
        false_positive.extend(list(overlap.max(axis=1) < false_positive_iou))
    ordered = pd.concat([g for _, g in candidates.groupby("image_id", sort=False)])
    return ordered.assign(hits=hits, false_positive=false_positive)


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
    """AUFROC (with a study-bootstrap CI), LUNA16 score, and the curve as a table."""
    data = build_froc_data(candidates.assign(score=candidates[score_column]), lesions, images)
    low, high = (float(v) for v in cfg["aufroc_fppi"])
    fppi, recall = froc_curve(data)
    rng = np.random.default_rng(seed)
    draws = cluster_weights(np.arange(data.n_studies), replicates, rng)
    samples = []
    for weights in draws:
        f, r = froc_curve(data, weights)
        samples.append(aufroc(f, r, low, high) if np.isfinite(r).all() else np.nan)
    ci = percentile_interval(np.array(samples), level)
    summary = {
        "aufroc": aufroc(fppi, recall, low, high) if np.isfinite(recall).all() else None,
        "aufroc_ci": list(ci),
        "luna16": luna16_score(fppi, recall) if np.isfinite(recall).all() else None,
        "lesions": len(lesions),
        "studies_with_lesions": int(lesions["study_id"].nunique()),
        "images": len(images),
    }
    return summary, pd.DataFrame({"fppi": fppi, "recall": recall})
