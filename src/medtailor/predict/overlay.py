"""One PNG per predicted image: the original image, every scored box with its probability
(red: at or above the validation threshold), and the activation map inside each positive
box (LayerCAM of the lesion evidence, ``evaluate.cam_method``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medtailor.figures import pyplot, save_figure
from medtailor.imageio import load_nifti
from medtailor.patches.crops import context_region
from medtailor.tables import box_columns, read_manifest

# Boxes drawn per image: the most probable ones (a detector keeps dozens of candidates).
DRAWN = 10


def activation_maps(
    classifier: torch.nn.Module, dataset: Any, rows: np.ndarray, method: str
) -> np.ndarray:
    """(N, H, W) maps of the lesion evidence for the dataset's ``rows`` (1 = strongest)."""
    from medtailor.evaluate.gradcam import gradcam_maps

    if len(rows) == 0:
        return np.zeros((0, dataset.input_size, dataset.input_size))
    device = next(classifier.parameters()).device
    images = torch.stack([dataset[int(k)][0] for k in rows]).to(device)
    with torch.enable_grad():
        return gradcam_maps(classifier, images, dataset.input_size, method)


def patch_extent(finding: pd.Series, box: np.ndarray, params: dict[str, Any]) -> list[float]:
    """Where a candidate's patch (its box with the patch stage's context) lies in the
    original image, as matplotlib's extent (left, right, bottom, top)."""
    cfg = params["patches"]
    low, high = context_region(box, float(cfg["context"]), bool(cfg["square"]))
    scale = [
        (finding[f"p{a}1"] - finding[f"p{a}0"]) / max(box[k + 2] - box[k], 1e-9)
        for k, a in enumerate("xy")
    ]
    left, right = (finding["px0"] + (edge - box[0]) * scale[0] for edge in (low[0], high[0]))
    top, bottom = (finding["py0"] + (edge - box[1]) * scale[1] for edge in (low[1], high[1]))
    # Pixel edges -> matplotlib's frame, where pixel i is centred on i.
    return [left - 0.5, right - 0.5, bottom - 0.5, top - 0.5]


def write_overlays(
    findings: pd.DataFrame,
    classifier: torch.nn.Module,
    dataset: Any,
    ingest_dir: Path,
    out_dir: Path,
    params: dict[str, Any],
) -> int:
    """Draw every 2D image of the classifier's kind with its findings; returns the number
    of PNGs written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(ingest_dir / "manifest.parquet").set_index("image_id")
    frame = dataset.frame().reset_index(drop=True)
    position = pd.Series(np.arange(len(frame)), index=frame["patch_id"])
    plt = pyplot()
    written = 0
    # Every image the classifier reads gets one, those without a kept candidate too.
    kind = dataset.kind
    images = manifest.index[(manifest["kind"] == kind) & (manifest["ndim"] == 2)]
    by_image = dict(tuple(findings.groupby("image_id")))
    for image_id in tqdm(sorted(images), desc="overlays", unit="image"):
        rows = by_image.get(image_id, findings.iloc[:0])
        image, _ = load_nifti(ingest_dir / manifest.loc[image_id, "image_path"])
        image = image[..., 0] if image.ndim == 3 else image
        drawn = rows.nlargest(DRAWN, "prob")
        positive = drawn[drawn["positive"].fillna(False).astype(bool)]
        maps = activation_maps(
            classifier,
            dataset,
            position.loc[positive["candidate_id"]].to_numpy(),
            str(params["evaluate"]["cam_method"]),
        )
        fig, ax = plt.subplots(figsize=(6, 6 * image.shape[1] / max(image.shape[0], 1)))
        low, high = np.percentile(image, [1, 99])
        ax.imshow(image.T, cmap="gray", vmin=low, vmax=high, origin="upper")
        for cam, (_, finding) in zip(maps, positive.iterrows(), strict=True):
            patch = frame.iloc[int(position.loc[finding["candidate_id"]])]
            box = patch[box_columns(2)].to_numpy(float)
            ax.imshow(
                cam,
                cmap="jet",
                alpha=0.35,
                extent=patch_extent(finding, box, params),
                interpolation="bilinear",
            )
        for _, finding in drawn.iterrows():
            hit = bool(finding["positive"]) if pd.notna(finding["positive"]) else False
            color = "red" if hit else "yellow"
            ax.add_patch(
                plt.Rectangle(
                    (finding["px0"] - 0.5, finding["py0"] - 0.5),
                    finding["px1"] - finding["px0"],
                    finding["py1"] - finding["py0"],
                    fill=False,
                    edgecolor=color,
                    linewidth=1.2,
                )
            )
            ax.text(
                finding["px0"],
                finding["py0"] - 2,
                f"{finding['prob']:.2f}",
                color=color,
                fontsize=7,
            )
        ax.set_xlim(-0.5, image.shape[0] - 0.5)
        ax.set_ylim(image.shape[1] - 0.5, -0.5)
        ax.set_title(f"{image_id}: {len(positive)} above threshold", fontsize=9)
        ax.axis("off")
        save_figure(fig, out_dir / f"{image_id}.png")
        written += 1
    return written


def letterbox_extent(shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[float]:
    """Where a whole image's square sample (the image letterboxed into a square of its
    longer physical side) lies over the image, as matplotlib's extent."""
    width, height = shape[0] * spacing[0], shape[1] * spacing[1]
    side = max(width, height)
    x0, y0 = (width - side) / 2 / spacing[0], (height - side) / 2 / spacing[1]
    x1, y1 = x0 + side / spacing[0], y0 + side / spacing[1]
    return [x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5]


def write_image_overlays(
    findings: pd.DataFrame,
    classifier: torch.nn.Module,
    dataset: Any,
    ingest_dir: Path,
    out_dir: Path,
    params: dict[str, Any],
) -> int:
    """Whole images: each with its class probabilities and the activation map of its most
    probable class; returns the number of PNGs written."""
    from medtailor.evaluate.gradcam import gradcam_maps

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(ingest_dir / "manifest.parquet").set_index("image_id")
    task = dataset.task
    classes = [str(c) for c in task["classes"]]
    method = str(params["evaluate"]["cam_method"])
    device = next(classifier.parameters()).device
    plt = pyplot()
    written = 0
    frame = dataset.frame().reset_index(drop=True)
    for position, sample in tqdm(frame.iterrows(), total=len(frame), desc="overlays", unit="image"):
        row = manifest.loc[sample["image_id"]]
        if int(row["ndim"]) != 2:
            continue
        rows = findings[findings["image_id"] == sample["image_id"]]
        top = rows.loc[rows["prob"].idxmax()]
        image_tensor = dataset[int(position)][0][None].to(device)
        with torch.enable_grad():
            cam = gradcam_maps(
                classifier,
                image_tensor,
                dataset.input_size,
                method,
                target=classes.index(str(top["target"])),
                multilabel=task["task"] == "multilabel",
            )[0]
        image, _ = load_nifti(ingest_dir / row["image_path"])
        image = image[..., 0] if image.ndim == 3 else image
        fig, ax = plt.subplots(figsize=(5, 5 * image.shape[1] / max(image.shape[0], 1)))
        low, high = np.percentile(image, [1, 99])
        ax.imshow(image.T, cmap="gray", vmin=low, vmax=high)
        spacing = tuple(float(v) for v in row["spacing"])
        ax.imshow(cam, cmap="jet", alpha=0.35, extent=letterbox_extent(image.shape, spacing))
        ax.set_xlim(-0.5, image.shape[0] - 0.5)
        ax.set_ylim(image.shape[1] - 0.5, -0.5)
        text = ", ".join(f"{r.target} {r.prob:.2f}" for r in rows.itertuples())
        ax.set_title(f"{sample['image_id']}: {text}\nmap: {top['target']}", fontsize=8)
        ax.axis("off")
        save_figure(fig, out_dir / f"{sample['image_id']}.png")
        written += 1
    return written
