"""``medtailor split``: one patient-level train/val/test split, computed once, used everywhere.

Patients (never images) are assigned, so no patient spans two splits. A keyed hash
(sha256 of ``split.key`` and the patient id) places each patient in [0, 1), cut at the
cumulative fractions; the key is not the training ``seed``, so runs with several training
seeds share one split, and another key draws another assignment. Patients are then
stratified by their label (``stratum``: has a lesion or not for boxes and binary targets,
the patient's most frequent class for multi-class ones): each stratum is brought to the
fractions (rounded to whole patients) by the fewest moves, each moving the patient whose
hash lies nearest the split it joins. Where the hash already holds every stratum's
counts, nothing moves.

A patient added to a stratum can move another one at its cut points (the counts change).
Two ways to keep a test set fixed while the data grows: ``split.keep`` names an earlier
split table whose patients keep their split (the new ones fill each stratum towards the
fractions), and ``split.stratify: false`` places each patient by its own hash alone
(never moved by others; proportions then only hold in expectation). The summary counts
patients, images and patients with lesions per split and class, and warns when a split is
more than 10 points from its fraction or has no lesion patient.

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
from medtailor.targets import classification_task, positive_images, target_codes

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


def target_counts(n: int, share: np.ndarray) -> np.ndarray:
    """Patients per split for a stratum of ``n``: the fractions rounded by largest
    remainder (ties to the earlier split), so they add up to ``n``."""
    exact = share * n
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(share)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: n - int(counts.sum())]:
        counts[k] += 1
    return counts


def hash_distance(position: float, split: int, edges: np.ndarray) -> float:
    """How far a hash position lies from a split's interval of [0, 1)."""
    low, high = edges[split], edges[split + 1]
    return 0.0 if low <= position < high else min(abs(position - low), abs(position - high))


def assign_splits(
    patients: pd.DataFrame,
    fractions: Sequence[float],
    key: str,
    stratify: bool = True,
    keep: pd.Series | None = None,
) -> pd.DataFrame:
    """``patients`` has ``patient_id`` (and, to stratify, ``stratum``); returns it, sorted
    by patient, with a ``split`` column.

    Each patient's keyed hash position in [0, 1) is cut at the cumulative fractions.
    Stratified, each stratum is then brought to its patient counts (the fractions, rounded)
    by the fewest moves: while a split holds too many patients and another too few, the
    patient of the first whose position lies nearest the second's interval moves. A hash
    assignment that already holds the counts stands as it is. ``keep`` (patient id ->
    split) fixes the patients it names: they count towards their strata and never move."""
    ordered = patients.sort_values("patient_id").reset_index(drop=True)
    position = hash_position(ordered["patient_id"], key)
    share = np.asarray(fractions, float) / float(np.sum(fractions))
    edges = np.concatenate([[0.0], np.cumsum(share)[:-1], [1.0]])
    index = np.searchsorted(edges[1:-1], position, side="right")
    fixed = np.zeros(len(ordered), bool)
    if keep is not None:
        kept = ordered["patient_id"].map(keep)
        fixed = kept.notna().to_numpy()
        index[fixed] = [SPLITS.index(name) for name in kept[fixed]]
    if stratify and "stratum" in ordered:
        for _, rows in ordered.groupby("stratum", sort=True).groups.items():
            rows = np.asarray(rows)
            target = target_counts(len(rows), share)
            while True:
                counts = np.bincount(index[rows], minlength=len(SPLITS))
                over = [k for k in range(len(SPLITS)) if counts[k] > target[k]]
                under = [k for k in range(len(SPLITS)) if counts[k] < target[k]]
                moves = [
                    (
                        hash_distance(position[row], to, edges),
                        ordered.at[row, "patient_id"],
                        row,
                        to,
                    )
                    for to in under
                    for row in rows
                    if index[row] in over and not fixed[row]
                ]
                if not moves:
                    break
                _, _, row, to = min(moves)
                index[row] = to
    return ordered.assign(split=np.asarray(SPLITS, dtype=object)[index])


def patient_strata(per_image: pd.DataFrame, classes: pd.DataFrame | None) -> pd.DataFrame:
    """One row per patient: ``has_lesion``, ``n_images`` and ``stratum``, the label the
    split balances (lesion or none; with multi-class targets the patient's most frequent
    class, ties to the first class)."""
    patients = per_image.groupby("patient_id", as_index=False).agg(
        has_lesion=("has_lesion", "any"),
        n_images=("image_id", "size"),
        patient_id_source=("patient_id_source", "first"),
    )
    patients["stratum"] = np.where(patients["has_lesion"], "lesion", "no lesion")
    if classes is not None and classification_task(classes)["task"] == "multiclass":
        task = classification_task(classes)
        coded = target_codes(classes, task).merge(per_image[["image_id", "patient_id"]])
        most = (
            coded.groupby(["patient_id", "label"])
            .size()
            .rename("n")
            .reset_index()
            .sort_values(["patient_id", "n", "label"], ascending=[True, False, True])
            .drop_duplicates("patient_id")
        )
        names = dict(
            zip(most["patient_id"], [task["classes"][c] for c in most["label"]], strict=True)
        )
        patients["stratum"] = patients["patient_id"].map(names).fillna("unlabelled")
    return patients


def read_kept_split(path: Path) -> pd.Series:
    """patient id -> split of an earlier split table (``split.keep``)."""
    if not path.is_file():
        raise SplitError(f"{path}: split.keep names no file (an earlier data/split/split.csv)")
    table = read_split(path)
    if not {"patient_id", "split"} <= set(table) or not table["split"].isin(SPLITS).all():
        raise SplitError(f"{path}: split.keep needs columns patient_id and split (train/val/test)")
    return table.set_index("patient_id")["split"]


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
    patients = patient_strata(per_image, classes)
    unidentified, warnings = identification_check(
        patients, bool(cfg["allow_unidentified_patients"])
    )
    keep = read_kept_split(Path(cfg["keep"])) if cfg.get("keep") else None
    split = assign_splits(patients, cfg["fractions"], str(cfg["key"]), cfg["stratify"], keep)
    # An external cohort validates frozen models: every patient is a test patient.
    external = "external" in params
    if external:
        split["split"] = "test"
    with atomic_output(out_csv) as tmp:
        split.to_csv(tmp, index=False)
    summary: dict[str, Any] = {
        "patients": len(split),
        "unidentified_patients": unidentified,
        "kept_patients": int(split["patient_id"].isin(keep.index).sum()) if keep is not None else 0,
        # Patients per split of each stratum (lesion / no lesion, or class).
        "strata": {
            str(stratum): {name: int((rows["split"] == name).sum()) for name in SPLITS}
            for stratum, rows in split.groupby("stratum")
        },
    }
    if classes is not None:
        task = classification_task(classes)
        coded = target_codes(classes, task).merge(per_image[["image_id", "patient_id"]])
        coded = coded.merge(split[["patient_id", "split"]])
        if task["task"] == "multiclass":  # images of each class per split
            summary["images_per_class"] = {
                name: {c: int((rows["label"] == k).sum()) for k, c in enumerate(task["classes"])}
                for name, rows in ((n, coded[coded["split"] == n]) for n in SPLITS)
            }
    for name in ("test",) if external else SPLITS:
        chosen = split[split["split"] == name]
        summary[f"{name}_patients"] = len(chosen)
        summary[f"{name}_patients_with_lesions"] = int(chosen["has_lesion"].sum())
        summary[f"{name}_images"] = int(chosen["n_images"].sum())
        messages = []
        if len(chosen) == 0 or not chosen["has_lesion"].any():
            messages.append(f"the {name} split has {len(chosen)} patients, none with a lesion")
        share, asked = len(chosen) / max(len(split), 1), float(cfg["fractions"][SPLITS.index(name)])
        if abs(share - asked) > 0.1 and not external:
            messages.append(
                f"the {name} split holds {len(chosen)} of {len(split)} patients ({share:.0%}) "
                f"against {asked:.0%} asked (another split.key draws another assignment)"
            )
        for message in messages:
            log.warning("WARNING: %s", message)
        warnings += messages
    summary["warnings"] = warnings
    return summary
