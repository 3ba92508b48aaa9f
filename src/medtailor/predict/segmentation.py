"""``medtailor predict`` for a 3D segmentation network: every volume of the input is
ingested and resampled as the training volumes were, segmented by sliding windows, and
its label map written on the volume's original (ingested) grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medtailor.imageio import load_nifti, save_nifti
from medtailor.predict.bundle import SEGMENTER_FILE
from medtailor.tables import read_manifest

LABEL_MAPS = "labels"


def load_segmenter(bundle: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The bundle's network (eval mode) and its training entry."""
    from medtailor.train_seg.models import SegInput, create_seg_model

    state = torch.load(bundle / SEGMENTER_FILE, map_location="cpu", weights_only=True)
    data = SegInput(**{**state["data"], "spacing": tuple(state["data"]["spacing"])})
    model = create_seg_model(state["entry"], data)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state["entry"]


def segment_volumes(bundle: Path, work: Path, out_dir: Path) -> pd.DataFrame:
    """Label maps of every resampled volume in ``work`` on its ingested grid, in
    ``out_dir/labels/<image_id>.nii.gz``; one row per volume and class: voxels and mL."""
    from medtailor.train_seg.data import (
        class_values,
        ingested_grids,
        scaled_channels,
        to_grid,
        to_label_values,
    )
    from medtailor.train_seg.loop import segment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, entry = load_segmenter(bundle, device)
    values, names = class_values(entry["labels"]), list(entry["labels"])
    window = entry["sliding_window"]
    manifest = read_manifest(work / "resample" / "manifest.parquet")
    volumes = manifest[manifest["ndim"] == 3].sort_values("image_id")
    ingested = read_manifest(work / "ingest" / "manifest.parquet").set_index("image_id")
    grids = ingested_grids(work / "ingest")
    rows = []
    for _, row in tqdm(volumes.iterrows(), total=len(volumes), desc="segment", unit="volume"):
        image, affine = load_nifti(work / "resample" / row["image_path"])
        channels = torch.from_numpy(scaled_channels(image, entry["intensity"]))
        with torch.no_grad():
            classes = segment(
                model,
                channels,
                entry["patch_size"],
                int(window["batch_size"]),
                float(window["overlap"]),
                device,
            )
        native_affine, shape = grids[row["image_id"]]
        native = to_grid(to_label_values(classes, values), affine, native_affine, shape)
        save_nifti(out_dir / LABEL_MAPS / f"{row['image_id']}.nii.gz", native, native_affine)
        voxel_ml = float(np.prod(ingested.loc[row["image_id"], "spacing"])) / 1000.0
        for name, value in zip(names, values, strict=True):
            voxels = int((native == value).sum())
            rows.append(
                {
                    "image_id": row["image_id"],
                    "patient_id": row["patient_id"],
                    "source_row": int(ingested.loc[row["image_id"], "source_row"]),
                    "class": name,
                    "label_value": value,
                    "voxels": voxels,
                    "volume_ml": voxels * voxel_ml,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "image_id", "patient_id", "source_row", "class", "label_value", "voxels", "volume_ml"
        ],
    )  # fmt: skip
