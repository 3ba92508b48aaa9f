"""Annotation tables that come with the raw data: boxes, label maps, NIfTI subjects and
whole-image classes.

All four are optional CSV files under the input root (paths in params ``ingest.annotations``).
A ``source`` names an image by its path relative to the input root: a DICOM file, a NIfTI
file, or the folder of a DICOM series (any file of the series works too). A bad row is
written to the audit report (file, row, problem) and skipped; the rest is used.

The classes table makes every image one sample of a whole-image classification task:
``source, label`` (binary when the labels are 0 and 1, multi-class otherwise), or
``source`` plus one column per finding (multi-label) whose cells are 1 (present),
0 (absent) or blank (unknown). CheXpert's -1 (uncertain) counts as unknown: it is left
out of the loss and the metrics, CheXpert's "U-Ignore" policy.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from medtailor.ingest.audit import Audit
from medtailor.tables import BOX_CORNERS


def normalise_source(value: str) -> str:
    text = value.strip().replace("\\", "/")
    return str(PurePosixPath(text)) if text else ""


@dataclass
class Annotations:
    boxes: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    labels: dict[str, str] = field(default_factory=dict)
    subjects: dict[str, tuple[str, str]] = field(default_factory=dict)
    # source -> {"label": class name} (single-label) or {finding: 1.0 | 0.0 | nan}.
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    class_columns: list[str] = field(default_factory=list)
    files: set[str] = field(default_factory=set)  # not images: kept out of discovery
    folders: set[str] = field(default_factory=set)  # the tables' folders, likewise


def _read_rows(path: Path, rel: str, required: list[str], audit: Audit) -> list[tuple[int, dict]]:
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                audit.reject(rel, f"annotation table lacks column(s) {missing}; table ignored")
                return []
            # Row numbers count the header as row 1, as a spreadsheet shows them.
            return [(number, row) for number, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        audit.reject(rel, f"cannot read annotation table: {exc}")
        return []


def _parse_box(row: dict[str, str]) -> dict[str, Any]:
    def number(key: str) -> float:
        text = (row.get(key) or "").strip()
        if not text:
            return math.nan
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{key}={text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{key}={text!r} is not finite")
        return value

    box = {key: number(key) for key in BOX_CORNERS}
    for axis in "xy":
        if math.isnan(box[f"{axis}0"]) or math.isnan(box[f"{axis}1"]):
            raise ValueError(f"{axis}0 and {axis}1 are required")
    if math.isnan(box["z0"]) != math.isnan(box["z1"]):
        raise ValueError("give both z0 and z1 (3D) or neither (2D)")
    for axis in "xyz":
        lo, hi = box[f"{axis}0"], box[f"{axis}1"]
        if not math.isnan(lo) and hi <= lo:
            raise ValueError(f"{axis}1 ({hi:g}) must be greater than {axis}0 ({lo:g})")
    box["lesion_id"] = (row.get("lesion_id") or "").strip()
    class_text = (row.get("class_id") or "1").strip() or "1"
    try:
        box["class_id"] = int(class_text)
    except ValueError:
        raise ValueError(f"class_id={class_text!r} is not an integer") from None
    return box


FINDING_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": math.nan, "-1": math.nan}
FINDING_VALUES["-1.0"] = math.nan


def _parse_classes(row: dict[str, str], columns: list[str]) -> dict[str, Any]:
    """The targets of one classes.csv row (see the module docstring)."""
    if columns == ["label"]:
        label = (row.get("label") or "").strip()
        if not label:
            raise ValueError("empty label")
        return {"label": label}
    targets = {}
    for column in columns:
        text = (row.get(column) or "").strip()
        if text not in FINDING_VALUES:
            raise ValueError(f"{column}={text!r} is not 1, 0, -1 or blank")
        targets[column] = FINDING_VALUES[text]
    return targets


def _load_classes(root: Path, rel: str, found: Annotations, audit: Audit) -> None:
    rows = _read_rows(root / rel, rel, ["source"], audit)
    if not rows:
        return
    header = [c for c in rows[0][1] if c is not None and c.strip() and c != "source"]
    columns = ["label"] if "label" in header else header
    if not columns:
        audit.reject(rel, "classes table has no label or finding column; table ignored")
        return
    found.class_columns = columns
    for number, row in rows:
        source = normalise_source(row.get("source") or "")
        try:
            if not source:
                raise ValueError("empty source")
            if source in found.classes:
                raise ValueError(f"source {source!r} is listed twice")
            found.classes[source] = _parse_classes(row, columns)
        except ValueError as exc:
            audit.reject(rel, f"row {number}: {exc}; row ignored")


def load_annotations(root: Path, tables: dict[str, str], audit: Audit) -> Annotations:
    found = Annotations()
    boxes_rel, labels_rel, subjects_rel = tables["boxes"], tables["labels"], tables["subjects"]
    classes_rel = tables.get("classes", "")
    for rel in (boxes_rel, labels_rel, subjects_rel, classes_rel):
        if rel:
            found.files.add(normalise_source(rel))
            folder = str(PurePosixPath(normalise_source(rel)).parent)
            if folder != ".":  # the annotations folder holds tables, never images
                found.folders.add(folder)

    if (root / boxes_rel).is_file():
        for number, row in _read_rows(
            root / boxes_rel, boxes_rel, ["source", "x0", "y0", "x1", "y1"], audit
        ):
            try:
                box = _parse_box(row)
            except ValueError as exc:
                audit.reject(f"{boxes_rel}", f"row {number}: {exc}; box ignored")
                continue
            found.boxes[normalise_source(row["source"])].append({**box, "row": number})

    if (root / labels_rel).is_file():
        for number, row in _read_rows(root / labels_rel, labels_rel, ["source", "label"], audit):
            label = normalise_source(row["label"])
            if not (root / label).is_file():
                audit.reject(labels_rel, f"row {number}: label file {label!r} does not exist")
                continue
            found.labels[normalise_source(row["source"])] = label
            found.files.add(label)

    if (root / subjects_rel).is_file():
        for number, row in _read_rows(
            root / subjects_rel, subjects_rel, ["source", "patient"], audit
        ):
            patient = (row.get("patient") or "").strip()
            if not patient:
                audit.reject(subjects_rel, f"row {number}: empty patient")
                continue
            study = (row.get("study") or "").strip()
            found.subjects[normalise_source(row["source"])] = (patient, study)
            audit.remember_identifiers([patient])

    if classes_rel and (root / classes_rel).is_file():
        _load_classes(root, classes_rel, found, audit)
    return found


def _has_rows(path: Path) -> bool:
    """A CSV table with at least one row after its header."""
    if not path.is_file():
        return False
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return sum(1 for line in handle if line.strip()) > 1


def task_input_errors(params: dict[str, Any]) -> list[str]:
    """What the project's tasks need from its raw data and the data lacks, each naming the
    table to add or the key to change: checked by the project's Snakefile before any job
    (a ``dvc repro`` user meets ingest's own errors instead). Nothing to say when the input is the synthetic set (made by the pipeline) or
    does not exist yet (ingest then says so)."""
    from medtailor.config import (
        SYNTH_INPUT,
        enabled,
        runs_classification,
        runs_detector,
        runs_segmentation,
    )

    cfg = params["ingest"]
    root = Path(cfg["input"])
    if cfg["input"] == SYNTH_INPUT or not root.is_dir():
        return []
    tables = cfg["annotations"]
    errors = []
    builtin = runs_detector(params) and params["detector"]["source"] == "builtin"
    if builtin and not _has_rows(root / tables["boxes"]):
        errors.append(
            f"{root / tables['boxes']}: the detector trains on lesion boxes and this table is "
            "missing or empty; add it (source,x0,y0,x1,y1), set detector.source: external "
            "with your own candidates, or classify whole images (patches.source: whole_image)"
        )
    whole_image = runs_classification(params) and not runs_detector(params)
    if whole_image and not _has_rows(root / tables.get("classes", "")):
        errors.append(
            f"{root / tables.get('classes', '')}: patches.source is whole_image and this "
            "classes table is missing or empty; add it (source,label), or set "
            "ingest.annotations.classes to yours"
        )
    segments = runs_segmentation(params) and (params["seg_models"] or enabled(params, "search_seg"))
    if segments and not _has_rows(root / tables["labels"]):
        errors.append(
            f"{root / tables['labels']}: 3D segmentation (train_seg, seg_models) trains on "
            "label maps and this table of them is missing or empty; add it (source,label), or "
            "remove the train_seg and seg_models blocks"
        )
    return errors


def check_task_inputs(params: dict[str, Any]) -> None:
    """Raise ParamsError listing ``task_input_errors``."""
    from medtailor.config import ParamsError

    errors = task_input_errors(params)
    if errors:
        listed = "\n".join(f"  - {line}" for line in errors)
        raise ParamsError(f"params.yaml asks for what the data cannot feed:\n{listed}")
