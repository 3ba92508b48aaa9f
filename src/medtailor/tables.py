"""The tables that pass between stages (manifest, boxes, audit), in one place.

Each stage writes through these helpers so the column sets documented in
docs/contracts.md stay the single definition every later stage reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medtailor.imageio import atomic_output

MANIFEST_COLUMNS = [
    "image_id",
    "patient_id",
    "study_id",
    "series_id",
    "patient_id_source",
    "modality",
    "kind",
    "ndim",
    "shape",
    "channels",
    "spacing",
    "spacing_source",
    "orientation",
    "affine",
    "image_path",
    "label_path",
    "n_boxes",
    "volume_index",
    "varies",
    "corrections",
    "source",
    "source_row",
    "source_format",
    "n_files",
    "transfer_syntax",
    "photometric",
]
BOX_COLUMNS = ["image_id", "box_id", "lesion_id", "x0", "y0", "z0", "x1", "y1", "z1", "class_id"]
BOX_CORNERS = ["x0", "y0", "z0", "x1", "y1", "z1"]
AUDIT_COLUMNS = ["source", "reason"]


def box_columns(ndim: int) -> list[str]:
    """The corner columns of a 2D (x0, y0, x1, y1) or 3D (x0, y0, z0, x1, y1, z1) box."""
    axes = "xyz"[:ndim]
    return [f"{a}0" for a in axes] + [f"{a}1" for a in axes]


def _write(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_output(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return path


def write_manifest(rows: list[dict], path: Path) -> Path:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return _write(frame.sort_values("image_id", kind="stable"), path)


def read_manifest(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    if "corrections" not in frame:  # written before ingest corrected anything
        frame["corrections"] = ""
    if "source_row" not in frame:  # written before ingest numbered the input files
        frame["source_row"] = 0
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a medtailor manifest, missing columns {sorted(missing)}")
    return frame


def manifest_affine(row: pd.Series) -> np.ndarray:
    return np.asarray(row["affine"], float).reshape(4, 4)


def write_boxes(rows: list[dict] | pd.DataFrame, path: Path) -> Path:
    frame = pd.DataFrame(rows, columns=BOX_COLUMNS)
    frame[BOX_CORNERS] = frame[BOX_CORNERS].astype(float)
    return _write(frame.sort_values(["image_id", "box_id"], kind="stable"), path)


def read_boxes(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


CLASSES_FILE = "classes.parquet"


def write_classes(rows: list[dict], columns: list[str], path: Path) -> Path:
    """Whole-image targets: ``image_id`` and ``label`` (a class name), or one float column
    per finding (1 present, 0 absent, NaN unknown)."""
    frame = pd.DataFrame(rows, columns=["image_id", *columns])
    if columns != ["label"]:
        frame[columns] = frame[columns].astype(float)
    return _write(frame.sort_values("image_id", kind="stable"), path)


def read_classes(folder: Path) -> pd.DataFrame | None:
    """The whole-image targets of a stage folder, or None when the data has none."""
    path = folder / CLASSES_FILE
    return pd.read_parquet(path) if path.is_file() else None


def write_audit(rows: list[dict], path: Path) -> Path:
    frame = pd.DataFrame(rows, columns=AUDIT_COLUMNS)
    return _write(frame.sort_values("source", kind="stable"), path)
