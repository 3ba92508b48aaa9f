"""How much the numbers rest on: positives, patients with positives and the detector's lesion
recall per split, with the warnings a reader must see before any AUC."""

from __future__ import annotations

from typing import Any

import pandas as pd

from medtailor.split import SPLITS


def evidence_table(
    index: pd.DataFrame, lesions: pd.DataFrame, kind: str, found: set[str]
) -> pd.DataFrame:
    """One row per split: patients, patches, positive patches, patients with a positive
    patch, lesions and the share of them the detector found.

    ``index`` is the patch store's index; ``lesions`` the ground-truth boxes (``box_id``)
    with the ``split`` and ``kind`` of their image; ``found`` the boxes a kept candidate
    overlaps with IoU above ``patches.positive_iou`` (the patches stage's recall).
    """
    rows = []
    for split in SPLITS:
        patches = index[(index["split"] == split) & (index["kind"] == kind)]
        positive = patches[patches["label"] == 1]
        boxes = lesions[(lesions["split"] == split) & (lesions["kind"] == kind)]
        hit = boxes["box_id"].isin(found)
        rows.append(
            {
                "split": split,
                "patients": patches["patient_id"].nunique(),
                "patches": len(patches),
                "positive_patches": len(positive),
                "patients_with_positives": positive["patient_id"].nunique(),
                "lesions": len(boxes),
                "detector_recall": float(hit.mean()) if len(boxes) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def evidence_warnings(table: pd.DataFrame, cfg: dict[str, Any]) -> list[str]:
    """Sentences for every split below ``evaluate.evidence`` thresholds, and for a detector
    that misses validation lesions (they can never count as found downstream)."""
    min_positives = int(cfg["min_positive_patches"])
    min_patients = int(cfg["min_patients_with_positives"])
    warnings = []
    for row in table.itertuples():
        if row.positive_patches < min_positives:
            warnings.append(
                f"{row.split}: {row.positive_patches} positive patch(es), fewer than "
                f"{min_positives} (evaluate.evidence.min_positive_patches)"
            )
        if row.patients_with_positives < min_patients:
            warnings.append(
                f"{row.split}: {row.patients_with_positives} patient(s) with a positive "
                f"patch, fewer than {min_patients} "
                "(evaluate.evidence.min_patients_with_positives)"
            )
    val = table[table["split"] == "val"]
    if len(val) and val["lesions"].iloc[0] and val["detector_recall"].iloc[0] < 1:
        row = val.iloc[0]
        missed = round(row["lesions"] * (1 - row["detector_recall"]))
        warnings.append(
            f"val: the detector found {row['detector_recall']:.0%} of {row['lesions']} "
            f"lesions ({missed} missed): a missed lesion is lost to every classifier"
        )
    return warnings
