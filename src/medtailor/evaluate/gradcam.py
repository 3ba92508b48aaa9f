"""Grad-CAM heatmaps (MONAI) for validation patches of each outcome (TP, FP, TN, FN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.visualize import GradCAM
from torch import nn


def last_convolution(model: nn.Module) -> str:
    name = ""
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            name = module_name
    if not name:
        raise ValueError("the model has no 2D convolution for Grad-CAM")
    return name


def outcome(label: int, prob: float, threshold: float) -> str:
    predicted = prob >= threshold
    return {(1, True): "TP", (0, True): "FP", (0, False): "TN", (1, False): "FN"}[
        (int(label), bool(predicted))
    ]


def gradcam_figure(
    model: nn.Module,
    images: torch.Tensor,
    cases: pd.DataFrame,
    threshold: float,
    path: Path,
    title: str,
) -> Path:
    """One row per case: the patch and its Grad-CAM (class "lesion") overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cam = GradCAM(nn_module=model, target_layers=last_convolution(model))
    maps = cam(images, class_idx=1).detach().numpy()[:, 0]
    fig, axes = plt.subplots(
        2, max(len(cases), 1), figsize=(2.2 * max(len(cases), 1), 4.6), squeeze=False
    )
    for column, (image, heat, (_, case)) in enumerate(
        zip(images[:, 0].numpy(), maps, cases.iterrows(), strict=True)
    ):
        label = outcome(case["label"], case["prob"], threshold)
        axes[0, column].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"{label} p={case['prob']:.2f}", fontsize=8)
        axes[1, column].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[1, column].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for row in range(2):
            axes[0 + row, column].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_cases(frame: pd.DataFrame, threshold: float, per_outcome: int, seed: int) -> pd.DataFrame:
    """Up to ``per_outcome`` labelled validation patches of each outcome, reproducibly."""
    labelled = frame[frame["label"] >= 0].copy()
    labelled["outcome"] = [
        outcome(lab, p, threshold)
        for lab, p in zip(labelled["label"], labelled["prob"], strict=True)
    ]
    chosen = [
        group.sample(min(per_outcome, len(group)), random_state=seed)
        for _, group in labelled.groupby("outcome", sort=True)
    ]
    return pd.concat(chosen) if chosen else labelled.iloc[:0]


def stack_patches(array: np.ndarray, rows: np.ndarray, input_size: int) -> torch.Tensor:
    images = torch.from_numpy(np.asarray(array[rows], np.float32)).transpose(1, 2)[:, None]
    if images.shape[-1] != input_size:
        images = torch.nn.functional.interpolate(
            images, size=(input_size, input_size), mode="bilinear", antialias=True
        )
    return images
