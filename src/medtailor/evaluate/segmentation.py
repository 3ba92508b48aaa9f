"""Dice of the segmentation models (``train_seg``'s ``dice.parquet``) with patient-bootstrap
intervals, the unit every other interval of the report resamples.

A volume belongs to one patient; a patient may have several. Each replicate draws patients
with replacement and averages Dice over their volumes (a volume counted as often as its
patient was drawn); volumes where a class is absent from both the truth and the prediction
have no Dice for it and are left out, and replicates with no defined Dice at all are
counted, not dropped silently.

Every pair of segmentation models is compared on the volumes both segmented: the mean
per-volume Dice difference, its patient-bootstrap interval (both models' Dice of a drawn
patient enter the same replicate) and a two-sided bootstrap p-value, 2 (1 + min(#(d* <= 0),
#(d* >= 0))) / (1 + B), Holm-adjusted over all pairs and classes. Sizes are reported at one
96x96x96 patch (the C2FNAS study's), whatever patch each network was trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medtailor.evaluate.stats import bootstrap_metric, holm
from medtailor.figures import pyplot, save_figure

# The patch at which every segmentation network's MACs are reported (the C2FNAS study's).
REPORTED_PATCH = (96, 96, 96)


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


def paired_dice_comparison(
    first: pd.DataFrame, second: pd.DataFrame, split: str, replicates: int, level: float, seed: int
) -> pd.DataFrame:
    """One row per class: mean Dice of ``first`` minus ``second`` over the volumes where
    both are defined, its patient-bootstrap CI and two-sided bootstrap p-value."""
    keys = ["image_id", "patient_id", "class"]
    both = first[first["split"] == split].merge(
        second[second["split"] == split], on=keys, suffixes=("_first", "_second")
    )
    rows = []
    for name, group in both.groupby("class", sort=False):
        difference = (group["dice_first"] - group["dice_second"]).to_numpy(float)
        defined = np.isfinite(difference)
        if not defined.any():
            continue
        interval = bootstrap_metric(
            lambda w, d=difference[defined]: weighted_mean_dice(d, w),
            group["patient_id"].to_numpy()[defined],
            replicates,
            level,
            seed,
        )
        samples = interval.samples[np.isfinite(interval.samples)]
        # (1 + count) / (1 + B): a bootstrap p-value is never 0, at best 1 / (B + 1).
        tail = min((samples <= 0).sum(), (samples >= 0).sum())
        p = min(1.0, 2 * (1 + tail) / (1 + len(samples)))
        rows.append(
            {
                "class": name,
                "difference": float(difference[defined].mean()),
                "difference_ci": [interval.low, interval.high],
                "p_value": float(p),
                "volumes": int(defined.sum()),
                "patients": int(group.loc[defined, "patient_id"].nunique()),
            }
        )
    return pd.DataFrame(rows)


def reported_macs(checkpoint: dict) -> int | None:
    """MACs of the checkpoint's network on one REPORTED_PATCH patch (None if it cannot run
    one, e.g. a network whose down-sampling does not divide it)."""
    from medtailor.complexity import count_macs
    from medtailor.train_seg.models import SegInput, create_seg_model

    data = SegInput(**{**checkpoint["data"], "spacing": tuple(checkpoint["data"]["spacing"])})
    # On the meta device nothing is computed: a full-size network at 96^3 costs no time.
    model = create_seg_model(checkpoint["entry"], data).to(torch.device("meta"))
    try:
        return count_macs(model, (data.in_channels, *REPORTED_PATCH))
    except (RuntimeError, ValueError):
        return None


def evaluate_segmentation(
    folders: dict[str, Path], replicates: int, level: float, seed: int
) -> dict[str, dict]:
    """Test-split Dice per class of every trained segmentation folder, with the network's
    size from its checkpoint, and the paired comparisons of every two models."""
    results: dict[str, dict] = {}
    tables = {}
    for name, folder in sorted(folders.items()):
        checkpoint = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
        tables[name] = pd.read_parquet(folder / "dice.parquet")
        table = dice_table(tables[name], "test", replicates, level, seed)
        results[name] = {
            "model": checkpoint["entry"]["model"],
            "parameters": checkpoint.get("parameters"),
            "macs": checkpoint.get("macs"),
            "macs_reported_patch": reported_macs(checkpoint),
            "patch_size": checkpoint["data"]["patch_size"],
            "best_epoch": checkpoint.get("epoch"),
            "val_dice_mean": checkpoint.get("val_dice"),
            "test": table.to_dict(orient="records"),
        }
    comparisons = []
    names = sorted(tables)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            pair = paired_dice_comparison(
                tables[first], tables[second], "test", replicates, level, seed
            )
            comparisons += [
                {"first": first, "second": second, **row} for row in pair.to_dict("records")
            ]
    for row, adjusted in zip(comparisons, holm([r["p_value"] for r in comparisons]), strict=True):
        row["p_holm"] = adjusted
    return {"models": results, "comparisons": comparisons}


def dice_curves(folders: dict[str, Path], out_dir: Path) -> Path | None:
    """Validation mean Dice along training of every segmentation model (history.csv)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    drawn = 0
    for name, folder in sorted(folders.items()):
        history = pd.read_csv(folder / "history.csv")
        validated = history[history["val_dice_mean"].notna()]
        if len(validated):
            ax.plot(validated["epoch"], validated["val_dice_mean"], marker="o", label=name)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mean Dice (foreground classes)")
    ax.set_ylim(0, 1)
    ax.set_title("Segmentation training")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir / "figures" / "segmentation_dice_curves.png")


def search_seg_section(fine_dir: Path, out_dir: Path) -> dict:
    """What the report shows of the segmentation search: its selection, the coarse search
    in brief and its figures (copied)."""
    import json
    import shutil

    selection = json.loads((fine_dir / "selection.json").read_text())
    history = pd.read_csv(fine_dir / "history.csv")
    figures = []
    for figure in sorted((fine_dir / "figures").glob("*.png")):
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, out_dir / "figures" / figure.name)
        figures.append(f"figures/{figure.name}")
    return {
        **selection,
        "coarse_candidates": len(history),
        "clusters_visited": int(history["cluster"].nunique()),
        "figures": figures,
    }


def segmentation_folders(root: Path) -> dict[str, Path]:
    """Trained segmentation folders under ``root`` (each with best.pt and dice.parquet)."""
    if not root.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(root.iterdir())
        if (folder / "best.pt").is_file() and (folder / "dice.parquet").is_file()
    }
