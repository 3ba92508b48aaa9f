"""Dice of the segmentation models (``train_seg``'s ``dice.parquet``) with patient-bootstrap
intervals, the unit every other interval of the report resamples.

A volume belongs to one patient; a patient may have several. Each replicate draws patients
with replacement and averages Dice over their volumes (a volume counted as often as its
patient was drawn); volumes where a class is absent from both the truth and the prediction
have no Dice for it and are left out, and replicates with no defined Dice at all are
counted, not dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medtailor.evaluate.stats import bootstrap_metric


def weighted_mean_dice(dice: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(r,) mean of ``dice`` under each row of (r, volumes) ``weights``; NaN Dice left out."""
    defined = np.isfinite(dice)
    w = weights * defined
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w * np.where(defined, dice, 0.0)).sum(axis=1) / total, np.nan)


def dice_table(
    dice: pd.DataFrame, split: str, replicates: int, level: float, seed: int
) -> pd.DataFrame:
    """One row per class: mean Dice over the split's volumes, its patient-bootstrap CI and
    how many replicates had no defined Dice."""
    rows = []
    part = dice[dice["split"] == split]
    for name, group in part.groupby("class", sort=False):
        values = group["dice"].to_numpy(float)
        interval = bootstrap_metric(
            lambda w, values=values: weighted_mean_dice(values, w),
            group["patient_id"].to_numpy(),
            replicates,
            level,
            seed,
        )
        defined = np.isfinite(values)
        rows.append(
            {
                "class": name,
                "dice": float(values[defined].mean()) if defined.any() else float("nan"),
                "dice_ci": [interval.low, interval.high],
                "dice_ci_undefined": interval.undefined,
                "volumes": int(defined.sum()),
                "patients": int(group.loc[defined, "patient_id"].nunique()),
            }
        )
    return pd.DataFrame(rows)


def evaluate_segmentation(
    folders: dict[str, Path], replicates: int, level: float, seed: int
) -> dict[str, dict]:
    """Test-split Dice per class of every trained segmentation folder, with the network's
    size from its checkpoint."""
    results = {}
    for name, folder in sorted(folders.items()):
        checkpoint = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
        table = dice_table(
            pd.read_parquet(folder / "dice.parquet"), "test", replicates, level, seed
        )
        results[name] = {
            "model": checkpoint["entry"]["model"],
            "parameters": checkpoint.get("parameters"),
            "macs": checkpoint.get("macs"),
            "patch_size": checkpoint["data"]["patch_size"],
            "best_epoch": checkpoint.get("epoch"),
            "val_dice_mean": checkpoint.get("val_dice"),
            "test": table.to_dict(orient="records"),
        }
    return results


def segmentation_folders(root: Path) -> dict[str, Path]:
    """Trained segmentation folders under ``root`` (each with best.pt and dice.parquet)."""
    if not root.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(root.iterdir())
        if (folder / "best.pt").is_file() and (folder / "dice.parquet").is_file()
    }
