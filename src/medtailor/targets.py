"""Whole-image classification targets (``classes.parquet``, written by ingest from
``annotations/classes.csv``): which task they pose and how a sample's targets are coded.

Three tasks:

- ``binary``: one ``label`` column whose values are 0 and 1; one output, AUC of class 1.
- ``multiclass``: one ``label`` column with any other values (class names, sorted
  naturally); softmax over the classes, one-vs-rest AUC per class.
- ``multilabel``: one column per finding with 1 (present), 0 (absent) or unknown (NaN);
  one sigmoid per finding, unknowns masked out of the loss and the metrics.

The patch store codes every sample's targets as integers: ``label`` (binary: 0/1,
multi-class: the class index) and, for multi-label, ``target_<k>`` (1, 0 or -1 unknown)
per finding k; ``task.json`` in the store names the task, its classes and what the
samples are (``candidates`` or ``whole_image``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

TASKS = ("binary", "multiclass", "multilabel")
UNKNOWN = -1
# The patch store of detector candidates: one binary target, lesion or not.
CANDIDATE_TASK = {"task": "binary", "classes": ["negative", "positive"], "samples": "candidates"}


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def classification_task(classes: pd.DataFrame) -> dict[str, Any]:
    """The task of a classes table, with its class (or finding) names in output order."""
    columns = [c for c in classes.columns if c != "image_id"]
    if columns == ["label"]:
        names = sorted({str(v) for v in classes["label"]}, key=_natural_key)
        if set(names) <= {"0", "1"}:
            return {"task": "binary", "classes": ["0", "1"]}
        return {"task": "multiclass", "classes": names}
    return {"task": "multilabel", "classes": columns}


def target_codes(classes: pd.DataFrame, task: dict[str, Any]) -> pd.DataFrame:
    """Per image: ``label`` (and ``target_<k>`` for multi-label) as small integers.

    A multi-label image's ``label`` says whether any finding is present (for counts and
    the split's summary); training and metrics use the ``target_<k>`` columns.
    """
    coded = pd.DataFrame({"image_id": classes["image_id"].to_numpy()})
    if task["task"] == "multilabel":
        values = classes[task["classes"]].to_numpy(float)
        for k in range(len(task["classes"])):
            column = values[:, k]
            coded[f"target_{k}"] = np.where(np.isnan(column), UNKNOWN, column).astype(np.int8)
        coded["label"] = (values == 1).any(axis=1).astype(np.int8)
    else:
        position = {name: k for k, name in enumerate(task["classes"])}
        coded["label"] = [position[str(v)] for v in classes["label"]]
        coded["label"] = coded["label"].astype(np.int8)
    return coded


def target_columns(task: dict[str, Any]) -> list[str]:
    """The store's columns a model learns: one per finding, or the single label."""
    if task["task"] == "multilabel":
        return [f"target_{k}" for k in range(len(task["classes"]))]
    return ["label"]


def output_count(task: dict[str, Any]) -> int:
    """Outputs of a classifier for the task (binary keeps two softmax logits)."""
    return 2 if task["task"] == "binary" else len(task["classes"])


def positive_images(classes: pd.DataFrame) -> set[str]:
    """Images that count as positive for the split's summary: label 1 (binary), any finding
    present (multi-label); every labelled image of a multi-class task."""
    task = classification_task(classes)
    coded = target_codes(classes, task)
    if task["task"] == "multiclass":
        return set(coded["image_id"])
    return set(coded.loc[coded["label"] == 1, "image_id"])
