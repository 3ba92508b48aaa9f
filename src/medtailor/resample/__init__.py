"""``medtailor resample``: volumes to isotropic spacing, radiographs to a fixed pixel spacing.

Reads the ingest manifest, writes resampled images, label maps and boxes with the same
table contracts, and a summary with throughput.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from medtailor.imageio import load_nifti, save_nifti, staged_folder
from medtailor.resample.resampling import grid_map, lowres_axis, resample_image, resample_labels
from medtailor.spatial import affine_spacing, orientation_code
from medtailor.tables import (
    CLASSES_FILE,
    box_columns,
    manifest_affine,
    read_boxes,
    read_classes,
    read_manifest,
    write_boxes,
    write_manifest,
)


def run_resample(input_dir: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Resample every image of the ingest outputs; ``out_dir`` is replaced only once the new
    outputs are complete."""
    with staged_folder(out_dir) as staging:
        return _resample(input_dir, staging, params["resample"])


def _resample(input_dir: Path, out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    manifest = read_manifest(input_dir / "manifest.parquet")
    boxes = read_boxes(input_dir / "boxes.parquet")
    started = time.perf_counter()
    rows, new_boxes = [], []
    voxels_in = voxels_out = passed = 0
    for _, row in tqdm(manifest.iterrows(), total=len(manifest), desc="resample", unit="image"):
        ndim = int(row["ndim"])
        image, affine = load_nifti(input_dir / row["image_path"])
        spacing = affine_spacing(manifest_affine(row), ndim)
        target = cfg["spacing_mm"] if ndim == 3 else cfg["radiograph_spacing_mm"]
        gmap = grid_map(image.shape[:ndim], spacing, target)
        separate = lowres_axis(spacing, float(cfg["anisotropy_threshold"]))
        new_affine = gmap.target_affine(affine)
        # Already on the target grid (radiographs exported at the target spacing): the
        # image passes through unchanged instead of through an interpolation pass.
        unchanged = tuple(gmap.out_shape) == tuple(image.shape[:ndim]) and np.allclose(
            new_affine, affine, rtol=0, atol=1e-6
        )
        passed += unchanged
        # Each channel of a multi-channel volume (channels last) on the same grid.
        channels = [image] if image.ndim == ndim else np.moveaxis(image, -1, 0)
        parts = [
            channel
            if unchanged
            else resample_image(
                channel,
                gmap,
                order=int(cfg["order"]),
                separate_axis=separate,
                order_separate=int(cfg["order_lowres_axis"]),
                progress=channel.size > 2e7,
                antialias=bool(cfg["antialias"]),
            )
            for channel in channels
        ]
        resampled = parts[0] if image.ndim == ndim else np.stack(parts, axis=-1)
        image_rel = f"images/{row['image_id']}.nii.gz"
        save_nifti(out_dir / image_rel, resampled, new_affine)
        label_rel = ""
        if row["label_path"]:
            labels, _ = load_nifti(input_dir / row["label_path"], dtype=None)
            new_labels = (
                labels
                if unchanged
                else resample_labels(
                    labels, gmap, cfg["label_mode"], separate, int(cfg["order_lowres_axis"])
                )
            )
            label_rel = f"labels/{row['image_id']}.nii.gz"
            save_nifti(out_dir / label_rel, new_labels, new_affine)
        image_boxes = boxes[boxes["image_id"] == row["image_id"]]
        if len(image_boxes):
            columns = box_columns(ndim)
            mapped = gmap.boxes_to_target(image_boxes[columns].to_numpy())
            moved = image_boxes.copy()
            moved[columns] = mapped
            new_boxes.append(moved)
        voxels_in += image.size
        voxels_out += resampled.size
        rows.append(
            {
                **row.to_dict(),
                "shape": list(gmap.out_shape),
                "spacing": list(affine_spacing(new_affine, ndim)),
                "orientation": orientation_code(new_affine, ndim),
                "affine": [float(v) for v in new_affine.ravel()],
                "image_path": image_rel,
                "label_path": label_rel,
            }
        )

    write_manifest(rows, out_dir / "manifest.parquet")
    all_boxes = pd.concat(new_boxes) if new_boxes else pd.DataFrame(columns=boxes.columns)
    write_boxes(all_boxes, out_dir / "boxes.parquet")
    classes = read_classes(input_dir)
    if classes is not None:  # whole-image targets do not move with the grid
        classes.to_parquet(out_dir / CLASSES_FILE, index=False)
    seconds = time.perf_counter() - started
    summary = {
        "images": len(rows),
        "volumes": int((manifest["ndim"] == 3).sum()),
        "radiographs": int((manifest["ndim"] == 2).sum()),
        "label_maps": sum(1 for r in rows if r["label_path"]),
        "already_on_target_grid": int(passed),
        "boxes": len(all_boxes),
        "voxels_in": int(voxels_in),
        "voxels_out": int(voxels_out),
        "seconds": round(seconds, 3),
        "megavoxels_per_second": round(voxels_out / 1e6 / seconds, 3) if seconds > 0 else 0.0,
    }
    return summary
