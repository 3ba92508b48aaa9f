"""``medtailor split``: one patient-level train/val/test split, computed once, used everywhere.

Patients (never images) are assigned, so no patient spans two splits. Each patient's split
is a function of ``split.key`` and its own pseudonym alone: a keyed hash (sha256 of key
and patient id) places it in [0, 1), cut at the cumulative fractions. Adding or removing a
patient therefore never moves another one, so a growing dataset keeps its test patients
out of training; and the key is not the training ``seed``, so runs with several training
seeds share one split. Proportions (and the share of patients with lesions per split) hold
in expectation: with few patients they can be far off, so the summary reports them and
warns when a split is more than 10 points from its fraction or has no lesion patient
(another ``split.key`` draws another assignment).

Patients that ingest could identify only by their study or their file (no PatientID, name
or birth date, and no subjects table) may be one person under several ids, which would
leak across splits: the split warns about them, and refuses when they are the majority
unless ``split.allow_unidentified_patients`` is true.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtailor.imageio import atomic_output
from medtailor.tables import read_boxes, read_classes, read_manifest
from medtailor.targets import positive_images

SPLITS = ("train", "val", "test")
UNIDENTIFIED_SOURCES = ("study", "file")
log = logging.getLogger(__name__)


class SplitError(ValueError):
    """The patients cannot be split honestly."""


def hash_position(patient_ids: Sequence[str], key: str) -> np.ndarray:
    """Each patient's place in [0, 1): sha256 of (key, patient id), so it depends on
    nothing but that patient (stable when others are added)."""
    return np.array(
        [
            int.from_bytes(hashlib.sha256(f"{key}:{pid}".encode()).digest()[:8], "big") / 2**64
            for pid in patient_ids
        ]
    )


def assign_splits(patients: pd.DataFrame, fractions: Sequence[float], key: str) -> pd.DataFrame:
    """``patients`` has ``patient_id`` (and any other columns); returns it, sorted by
    patient, with a ``split`` column from the keyed hash of each patient id."""
    ordered = patients.sort_values("patient_id").reset_index(drop=True)
    edges = np.cumsum(np.asarray(fractions, float) / float(np.sum(fractions)))[:-1]
    index = np.searchsorted(edges, hash_position(ordered["patient_id"], key), side="right")
    return ordered.assign(split=np.asarray(SPLITS, dtype=object)[index])


def identification_check(patients: pd.DataFrame, allow_unidentified: bool) -> tuple[int, list[str]]:
    """Count patients identified only by study or file; warn, or refuse when they are the
    majority and the user has not allowed it."""
    unidentified = int(patients["patient_id_source"].isin(UNIDENTIFIED_SOURCES).sum())
    warnings = []
    if unidentified:
        message = (
            f"{unidentified} of {len(patients)} patients were identified only by their study "
            f"or file (no PatientID, PatientName or birth date, and no annotations/subjects.csv "
            f"row): one person may appear under several ids and straddle the splits"
        )
        if 2 * unidentified > len(patients) and not allow_unidentified:
            raise SplitError(
                f"{message}. Add annotations/subjects.csv (source -> patient), or set "
                "split.allow_unidentified_patients: true to split them anyway"
            )
        log.warning("WARNING: %s", message)
        warnings.append(message)
    return unidentified, warnings


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
    cfg = params["split"]
    manifest = read_manifest(input_dir / "manifest.parquet")
    boxes = read_boxes(input_dir / "boxes.parquet")
    # Whole-image targets count like boxes: a patient with a positive image has a "lesion".
    classes = read_classes(input_dir)
    lesion_images = set(boxes["image_id"]) | (
        positive_images(classes) if classes is not None else set()
    )
    per_image = manifest.assign(has_lesion=manifest["image_id"].isin(lesion_images))
    patients = per_image.groupby("patient_id", as_index=False).agg(
        has_lesion=("has_lesion", "any"),
        n_images=("image_id", "size"),
        patient_id_source=("patient_id_source", "first"),
    )
    unidentified, warnings = identification_check(
        patients, bool(cfg["allow_unidentified_patients"])
    )
    split = assign_splits(patients, cfg["fractions"], str(cfg["key"]))
    with atomic_output(out_csv) as tmp:
        split.to_csv(tmp, index=False)
    summary: dict[str, Any] = {"patients": len(split), "unidentified_patients": unidentified}
    for name in SPLITS:
        chosen = split[split["split"] == name]
        summary[f"{name}_patients"] = len(chosen)
        summary[f"{name}_patients_with_lesions"] = int(chosen["has_lesion"].sum())
        summary[f"{name}_images"] = int(chosen["n_images"].sum())
        messages = []
        if len(chosen) == 0 or not chosen["has_lesion"].any():
            messages.append(f"the {name} split has {len(chosen)} patients, none with a lesion")
        share, asked = len(chosen) / max(len(split), 1), float(cfg["fractions"][SPLITS.index(name)])
        if abs(share - asked) > 0.1:
            messages.append(
                f"the {name} split holds {len(chosen)} of {len(split)} patients ({share:.0%}) "
                f"against {asked:.0%} asked (another split.key draws another assignment)"
            )
        for message in messages:
            log.warning("WARNING: %s", message)
        warnings += messages
    summary["warnings"] = warnings
    return summary
