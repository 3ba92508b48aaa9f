"""Whole-image samples: each image of a classes table becomes one sample of the store.

The image is scaled like a candidate patch and resized to the patch size with its aspect
kept: the crop is the square around the whole image, so the shorter side is padded with
zeros on both ends. Its box in the index is the whole image; it has no score or IoU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medtailor.targets import UNKNOWN, target_codes, target_columns

WHOLE_IMAGE_SCORE = 100.0  # the top of the candidate score range: never filtered out


def unknown_codes(image_ids: pd.Series, task: dict[str, Any]) -> pd.DataFrame:
    """Targets of images without labels (new scans a trained model predicts): unknown."""
    coded = pd.DataFrame({"image_id": image_ids.to_numpy(), "label": UNKNOWN})
    for column in target_columns(task):
        coded[column] = UNKNOWN
    return coded


def whole_image_index(
    manifest: pd.DataFrame, classes: pd.DataFrame | None, task: dict[str, Any]
) -> pd.DataFrame:
    """One index row per image with targets (every image, its targets unknown, when
    ``classes`` is None); boxes span the image (x along axis 0)."""
    from medtailor.patches import INDEX_COLUMNS

    coded = (
        target_codes(classes, task)
        if classes is not None
        else unknown_codes(manifest["image_id"], task)
    )
    meta = manifest[["image_id", "study_id", "patient_id", "kind", "split", "shape"]]
    index = meta.merge(coded, on="image_id", how="inner").sort_values("image_id")
    shapes = [tuple(int(v) for v in shape) for shape in index["shape"]]
    for k, axis in enumerate("xyz"):
        index[f"{axis}0"] = [0.0 if len(s) > k else np.nan for s in shapes]
        index[f"{axis}1"] = [float(s[k]) if len(s) > k else np.nan for s in shapes]
    index["patch_id"] = index["image_id"] + "-image"
    index["score"] = WHOLE_IMAGE_SCORE
    index["best_iou"] = np.nan
    index["gt_id"] = ""
    index["row"] = index.groupby(["kind", "split"]).cumcount()
    extra = [c for c in target_columns(task) if c != "label"]
    return index.reindex(columns=[*INDEX_COLUMNS, *extra]).reset_index(drop=True)


def class_counts(index: pd.DataFrame, task: dict[str, Any]) -> pd.DataFrame:
    """Samples per class (multi-label: per finding, positives and unknowns) and split."""
    from medtailor.split import SPLITS

    rows = []
    for k, name in enumerate(task["classes"]):
        row: dict[str, Any] = {"class": name}
        for split in SPLITS:
            part = index[index["split"] == split]
            if task["task"] == "multilabel":
                row[split] = int((part[f"target_{k}"] == 1).sum())
                row[f"{split}_unknown"] = int((part[f"target_{k}"] < 0).sum())
            else:
                row[split] = int((part["label"] == k).sum())
        rows.append(row)
    return pd.DataFrame(rows)
