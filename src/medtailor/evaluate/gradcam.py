"""Class activation maps (MONAI's Grad-CAM, or LayerCAM on its hooks) for validation
patches of each outcome (TP, FP, TN, FN), and the pointing game that checks them.

The target layer is the deepest backbone stage whose feature map still has at least
``MIN_CAM_SIDE`` pixels across the input (timm's ``feature_info`` gives each stage's
reduction). Grad-CAM's usual choice, the last convolution, sees a 64-pixel patch at
stride 32 as a 2 x 2 map: upsampled, it is flat.

The explained score is the lesion evidence, logit(lesion) - logit(no lesion): with a
two-class softmax only the difference decides the prediction. MONAI's GradCAM upsamples
the map to the input; its *default* post-processing maps (min, max) to (1, 0), i.e. it
flips the map (documented in ``monai.visualize.class_activation_maps.default_normalizer``),
so the map is scaled here with (min, max) -> (0, 1): 1 is where the evidence is.

``evaluate.cam_method`` chooses how a stage's activations are weighted. Grad-CAM weighs
each channel by its gradient averaged over the map; LayerCAM (Jiang et al., IEEE TIP
2021) weighs each activation by its own positive gradient, which keeps the location at
mid-level stages where Grad-CAM's channel averages blur it: on a pre-trained Lite0 (stage
of stride 16) it moved the pointing game from 61% to 87% (docs/stages.md, evaluate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.transforms import ScaleIntensity
from monai.visualize import GradCAM
from torch import nn

from medtailor.figures import pyplot, save_figure

MIN_CAM_SIDE = 7


class LayerCAM(GradCAM):
    """LayerCAM on MONAI's Grad-CAM machinery (hooks, upsampling, post-processing): the
    map is ReLU(sum over channels of ReLU(gradient) * activation), per location."""

    def compute_map(
        self,
        x: torch.Tensor,
        class_idx: int | None = None,
        retain_graph: bool = False,
        layer_idx: int = -1,
        **kwargs: Any,
    ) -> torch.Tensor:
        _, acti, grad = self.nn_module(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
        acti, grad = acti[layer_idx], grad[layer_idx]
        return torch.relu((torch.relu(grad) * acti).sum(1, keepdim=True))


# evaluate.cam_method -> (the name a reader knows it by, its MONAI-based class).
CAM_METHODS: dict[str, tuple[str, type[GradCAM]]] = {
    "gradcam": ("Grad-CAM", GradCAM),
    "layercam": ("LayerCAM", LayerCAM),
}


def gradcam_layer(model: nn.Module, input_size: int) -> str:
    """Name of the Grad-CAM target layer of a ``Classifier`` for ``input_size`` inputs."""
    backbone = getattr(model, "backbone", None)
    present = dict(backbone.named_modules()) if backbone is not None else {}
    stages = [
        info
        for info in getattr(backbone, "feature_info", [])
        if info["module"] in present and input_size / info["reduction"] >= MIN_CAM_SIDE
    ]
    if stages:
        return f"backbone.{stages[-1]['module']}"
    return last_convolution(model)


class ClassEvidence(nn.Module):
    """A classifier seen as one score, the evidence for class ``target``: its logit minus
    the mean of the other logits (two classes: logit(lesion) - logit(no lesion)), or, for
    independent findings (``multilabel``, one sigmoid each), the finding's own logit."""

    def __init__(self, classifier: nn.Module, target: int = 1, multilabel: bool = False) -> None:
        super().__init__()
        self.classifier, self.target, self.multilabel = classifier, target, multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x)
        own = logits[:, self.target]
        if self.multilabel:
            return own[:, None]
        others = torch.cat([logits[:, : self.target], logits[:, self.target + 1 :]], dim=1)
        return (own - others.mean(dim=1))[:, None]


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Per image, (min, max) -> (0, 1) with MONAI's ScaleIntensity (a constant map -> 0)."""
    scale = ScaleIntensity(minv=0.0, maxv=1.0)
    return torch.stack([torch.as_tensor(scale(image)) for image in maps])


def gradcam_maps(
    model: nn.Module,
    images: torch.Tensor,
    input_size: int,
    method: str,
    target: int = 1,
    multilabel: bool = False,
) -> np.ndarray:
    """(N, H, W) activation maps of the evidence for class ``target`` (the lesion, for
    candidate patches; ``method``: gradcam or layercam), 1 where it is strongest."""
    if method not in CAM_METHODS:
        raise ValueError(f"evaluate.cam_method {method!r}: expected one of {sorted(CAM_METHODS)}")
    model.eval()
    layer = f"classifier.{gradcam_layer(model, input_size)}"
    cam = CAM_METHODS[method][1](
        nn_module=ClassEvidence(model, target, multilabel),
        target_layers=layer,
        postprocessing=scale_to_unit,
    )
    # An input that requires grad lets the backward hooks see module inputs too (else
    # torch warns that full backward hooks fire on outputs only).
    return (
        cam(images.detach().clone().requires_grad_(True), class_idx=0).detach().cpu().numpy()[:, 0]
    )


def pointing_game(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether each map's maximum lies inside its box (Zhang et al.'s pointing game).

    ``maps`` is (N, H, W), indexed (row = y, column = x); ``boxes`` is (N, 4) pixel edges
    (x0, y0, x1, y1) in the same frame. The maximum pixel counts as inside when its centre
    is; a flat map points at its first pixel, so it only scores when the box covers it."""
    maps, boxes = np.asarray(maps), np.asarray(boxes, float)
    rows, columns = np.unravel_index(maps.reshape(len(maps), -1).argmax(axis=1), maps.shape[1:])
    x, y = columns + 0.5, rows + 0.5
    return (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])


def box_share(boxes: np.ndarray, size: int) -> np.ndarray:
    """Share of a ``size`` x ``size`` patch each box covers: a random point's chance of
    falling inside it, the pointing game's chance level."""
    clipped = np.clip(np.asarray(boxes, float), 0, size)
    return (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]) / size**2


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
    method: str,
) -> Path:
    """One row per case: the patch and its activation map (class "lesion") overlaid."""
    plt = pyplot()
    maps = gradcam_maps(model, images, images.shape[-1], method)
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
    return save_figure(fig, path, dpi=110)


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
