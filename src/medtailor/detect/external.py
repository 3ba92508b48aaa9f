"""Candidate boxes from the user's own detector (Detectron2, YOLO, nnDetection, ...).

Format (CSV, or JSON as a list of objects / ``{"boxes": [...]}``), one row per box, in the
voxel grid of the resampled images ``data/resample/images/<image_id>.nii.gz``:
``image_id, x0, y0, [z0,] x1, y1, [z1,] score`` with edge corners (voxel i spans
[i, i+1)) and ``score`` on a 0-100 scale. Every problem is reported with file, row and
what is wrong; a file with any problem is refused whole.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medtailor.tables import BOX_CORNERS

MAX_LISTED = 20


class BoxFileError(ValueError):
    """The external box file does not match the documented format."""


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise BoxFileError(f"{path}: external box file does not exist")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BoxFileError(f"{path}: not valid JSON ({exc})") from exc
        rows = data.get("boxes") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BoxFileError(f"{path}: expected a list of box objects (or {{'boxes': [...]}})")
        return rows
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BoxFileError(f"{path}: not a readable CSV ({exc})") from exc
    return frame.to_dict("records")


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{key}={value!r} is not finite")
    return number


def load_external_boxes(path: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """Validate ``path`` against the manifest; return candidates (image_id, corners, score)."""
    rows = _read_rows(path)
    shapes = {
        row["image_id"]: tuple(int(v) for v in row["shape"]) for _, row in manifest.iterrows()
    }
    # CSV rows count the header as row 1; JSON rows are numbered from 1.
    first = 1 if path.suffix.lower() == ".json" else 2
    problems: list[str] = []
    records = []
    for number, row in enumerate(rows, start=first):
        try:
            records.append(_check_row(row, shapes))
        except ValueError as exc:
            problems.append(f"{path}: row {number}: {exc}")
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        )
        raise BoxFileError(f"{len(problems)} problem(s) in the external boxes:\n  {shown}{more}")
    frame = pd.DataFrame(records, columns=["image_id", *BOX_CORNERS, "score"])
    return frame


def _check_row(row: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
    image_id = str(row.get("image_id", "")).strip()
    if not image_id:
        raise ValueError("image_id is missing")
    if image_id not in shapes:
        raise ValueError(f"unknown image_id {image_id!r} (not in the resampled manifest)")
    shape = shapes[image_id]
    record: dict = {"image_id": image_id}
    for axis, size in zip("xyz", (*shape, None, None), strict=False):
        lo, hi = _number(row, f"{axis}0"), _number(row, f"{axis}1")
        if axis == "z" and len(shape) == 2:
            if lo is not None or hi is not None:
                raise ValueError("z0/z1 given for a 2D image")
            record["z0"] = record["z1"] = np.nan
            continue
        if lo is None or hi is None:
            raise ValueError(f"{axis}0 and {axis}1 are required for a {len(shape)}D image")
        if hi <= lo:
            raise ValueError(
                f"negative or empty size: {axis}1 ({hi:g}) must exceed {axis}0 ({lo:g})"
            )
        if lo < 0 or hi > size:
            raise ValueError(
                f"box outside the image: {axis} [{lo:g}, {hi:g}] not within [0, {size}]"
            )
        record[f"{axis}0"], record[f"{axis}1"] = lo, hi
    score = _number(row, "score")
    if score is None:
        raise ValueError("score is missing")
    if not 0 <= score <= 100:
        raise ValueError(f"score {score:g} outside the 0-100 range")
    record["score"] = score
    return record
