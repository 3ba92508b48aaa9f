"""``medtailor train-detector`` and ``medtailor detect``: candidate boxes for every image.

The built-in detector is MONAI's RetinaNet (2D for radiographs, 3D for volumes), trained
on the training split only; with ``detector.train_folds`` > 1 each training image is
scored by a detector trained without its patient (out-of-fold). ``detect`` writes ``candidates.parquet``: image_id,
candidate_id, kind, the box in voxel edges (x0..z1) and its corner points in world mm
(wx0..wz1), and score (0-100). With ``detector.source: external`` the user's boxes are
validated and written in the same table instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from medtailor.detect.data import KINDS, DetectionImage, load_detection_images
from medtailor.detect.external import load_external_boxes
from medtailor.detect.inference import predict_boxes
from medtailor.detect.model import build_detector, device
from medtailor.detect.training import (
    FOLDS_FILE,
    detector_file,
    load_checkpoint,
    run_train_detector,
)
from medtailor.imageio import atomic_output
from medtailor.spatial import voxel_to_world
from medtailor.tables import BOX_CORNERS, box_columns, manifest_affine, read_manifest

__all__ = ["run_detect", "run_train_detector"]
log = logging.getLogger(__name__)
CANDIDATE_COLUMNS = [
    "image_id",
    "candidate_id",
    "kind",
    *BOX_CORNERS,
    "wx0",
    "wy0",
    "wz0",
    "wx1",
    "wy1",
    "wz1",
    "score",
]


def with_world_corners(candidates: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Number candidates per image (by score) and add their corner points in world mm."""
    parts = []
    by_id = manifest.set_index("image_id")
    for image_id, group in candidates.groupby("image_id", sort=True):
        row = by_id.loc[image_id]
        ndim = int(row["ndim"])
        group = group.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
        corners = group[box_columns(ndim)].to_numpy(float)
        affine = manifest_affine(row)
        low = voxel_to_world(affine, corners[:, :ndim] - 0.5)
        high = voxel_to_world(affine, corners[:, ndim:] - 0.5)
        group[["wx0", "wy0", "wz0"]] = low
        group[["wx1", "wy1", "wz1"]] = high
        group["kind"] = row["kind"]
        group["candidate_id"] = [f"{image_id}-c{i + 1}" for i in range(len(group))]
        parts.append(group)
    frame = pd.concat(parts) if parts else pd.DataFrame(columns=CANDIDATE_COLUMNS)
    return frame[CANDIDATE_COLUMNS].reset_index(drop=True)


def write_candidates(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_output(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def detector_of_images(manifest: pd.DataFrame, model_dir: Path) -> pd.Series:
    """Which detector scores each image: the fold number of a training patient when
    ``train_detector`` trained out-of-fold detectors (``folds.csv``), else -1 (the
    detector trained on the whole training split)."""
    folds_file = model_dir / FOLDS_FILE
    if not folds_file.is_file():
        return pd.Series(-1, index=manifest["image_id"].to_numpy())
    folds = pd.read_csv(folds_file, dtype={"patient_id": str}).set_index("patient_id")["fold"]
    return pd.Series(
        manifest["patient_id"].map(folds).fillna(-1).astype(int).to_numpy(),
        index=manifest["image_id"].to_numpy(),
    )


def boxes_of_images(
    checkpoint_path: Path,
    ndim: int,
    resample_dir: Path,
    rows: pd.DataFrame,
    params: dict[str, Any],
    images: dict[str, DetectionImage] | None = None,
) -> list[dict[str, Any]]:
    """Boxes and scores of one trained detector on the images of ``rows`` (loaded here
    with the checkpoint's intensity window unless ``images`` holds them by image_id)."""
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path}: no trained detector (run train_detector)")
    checkpoint = load_checkpoint(checkpoint_path)
    if "config" not in checkpoint:
        raise ValueError(
            f"{checkpoint_path}: a detector saved before checkpoints carried their "
            "configuration; retrain it (medtailor train-detector)"
        )
    cfg = checkpoint["config"]
    detector = build_detector(ndim, cfg, params["detector"], pretrained=False)
    detector.load_state_dict(checkpoint["state_dict"])
    detector.to(device())
    chosen = (
        [images[image_id] for image_id in rows["image_id"]]
        if images is not None
        else load_detection_images(resample_dir, rows, cfg["intensity"])
    )
    records = []
    for item in tqdm(chosen, desc=f"detect {checkpoint_path.stem}", unit="image"):
        boxes, scores = predict_boxes(detector, item.image, tuple(cfg["patch_size"]))
        for box, score in zip(boxes, scores, strict=True):
            record = dict(zip(box_columns(ndim), box.tolist(), strict=True))
            records.append({"image_id": item.image_id, **record, "score": float(score)})
    return records


def builtin_candidates(resample_dir: Path, model_dir: Path, params: dict[str, Any]) -> pd.DataFrame:
    manifest = read_manifest(resample_dir / "manifest.parquet")
    which = detector_of_images(manifest, model_dir)
    records = []
    for kind, ndim in KINDS.items():
        rows = manifest[manifest["kind"] == kind]
        for fold, chosen in rows.groupby(which.loc[rows["image_id"]].to_numpy()):
            checkpoint_path = detector_file(model_dir, kind, None if fold < 0 else int(fold))
            records += boxes_of_images(checkpoint_path, ndim, resample_dir, chosen, params)
    frame = pd.DataFrame(records, columns=["image_id", *BOX_CORNERS, "score"])
    return with_world_corners(frame, manifest)


def run_detect(
    resample_dir: Path, source: Path, out_file: Path, params: dict[str, Any]
) -> dict[str, Any]:
    """Candidates from the trained detectors in ``source`` (a folder) or an external file."""
    manifest = read_manifest(resample_dir / "manifest.parquet")
    if params["detector"]["source"] == "external":
        candidates = with_world_corners(load_external_boxes(source, manifest), manifest)
    else:
        candidates = builtin_candidates(resample_dir, source, params)
    write_candidates(candidates, out_file)
    per_image = candidates.groupby("image_id").size().reindex(manifest["image_id"], fill_value=0)
    return {
        "images": len(manifest),
        "candidates": len(candidates),
        "candidates_per_image": round(float(per_image.mean()), 2) if len(per_image) else 0.0,
        "candidates_above_10": int((candidates["score"] > 10).sum()),
        "mean_score": round(float(np.mean(candidates["score"])), 3) if len(candidates) else 0.0,
    }
