"""``medtailor split``: one patient-level train/val/test split, computed once, used everywhere.

Patients (never images) are assigned, so no patient spans two splits; the assignment is
stratified on whether the patient has any lesion and is a deterministic function of the
seed and the set of patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.imageio import atomic_output
from medtailor.tables import read_boxes, read_manifest

SPLITS = ("train", "val", "test")


def allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items into len(fractions) counts by the largest-remainder method."""
    raw = np.asarray(fractions, float) / float(np.sum(fractions)) * n
    counts = np.floor(raw).astype(int)
    for index in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[index] += 1
    return counts.tolist()


def assign_splits(patients: pd.DataFrame, fractions: Sequence[float], seed: int) -> pd.DataFrame:
    """``patients`` has ``patient_id`` and ``has_lesion``; returns it with a ``split`` column.

    Each stratum (with / without lesion) is shuffled with the seed and spread evenly over
    [0, 1) (its j-th patient at (j + 0.5) / n); all patients are then ordered by that
    position and cut by the largest-remainder counts of ``fractions``. So the split sizes
    are exact overall (no split is left empty by rounding small strata) and every stratum
    is spread across the splits in proportion. Input row order does not matter.
    """
    rng = np.random.default_rng(seed)
    ordered = patients.sort_values("patient_id").reset_index(drop=True)
    position = np.zeros(len(ordered))
    for _, stratum in ordered.groupby("has_lesion", sort=True):
        shuffled = stratum.index.to_numpy()[rng.permutation(len(stratum))]
        position[shuffled] = (np.arange(len(stratum)) + 0.5) / len(stratum)
    tie_break = rng.random(len(ordered))
    order = np.lexsort((tie_break, position))
    labels = np.repeat(SPLITS, allocate(len(ordered), fractions))
    split = np.empty(len(ordered), dtype=object)
    split[order] = labels
    return ordered.assign(split=split)


def read_split(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient_id": str, "split": str})


def manifest_with_split(resample_dir: Path, split_csv: Path) -> pd.DataFrame:
    manifest = read_manifest(resample_dir / "manifest.parquet")
    split = read_split(split_csv)[["patient_id", "split"]]
    merged = manifest.merge(split, on="patient_id", how="left")
    missing = merged["split"].isna()
    if missing.any():
        raise ValueError(
            f"{split_csv}: {int(missing.sum())} image(s) belong to patients without a split; "
            "rerun the split stage after changing the data"
        )
    return merged


def run_split(input_dir: Path, out_csv: Path, params: dict[str, Any]) -> dict[str, Any]:
    manifest = read_manifest(input_dir / "manifest.parquet")
    boxes = read_boxes(input_dir / "boxes.parquet")
    lesion_images = set(boxes["image_id"])
    per_image = manifest.assign(has_lesion=manifest["image_id"].isin(lesion_images))
    patients = per_image.groupby("patient_id", as_index=False).agg(
        has_lesion=("has_lesion", "any"), n_images=("image_id", "size")
    )
    split = assign_splits(patients, params["split"]["fractions"], int(params["seed"]))
    with atomic_output(out_csv) as tmp:
        split.to_csv(tmp, index=False)
    summary: dict[str, Any] = {"patients": len(split)}
    for name in SPLITS:
        chosen = split[split["split"] == name]
        summary[f"{name}_patients"] = len(chosen)
        summary[f"{name}_patients_with_lesions"] = int(chosen["has_lesion"].sum())
        summary[f"{name}_images"] = int(chosen["n_images"].sum())
    return summary
