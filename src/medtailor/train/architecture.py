"""Classifier = timm backbone (optionally truncated) + a registered head.

Layer groups (``backbones.layer_groups``) are timm's coarse parameter groups, so "unfreeze
the top N groups" means the same thing for every timm family.

Truncation (CheXtransfer) removes the final k stages and their head layers; each family
has one registered rule (``@register_truncation``):
- ResNet: the last k residual stages (layer4, then layer3, ...);
- DenseNet: the last k dense blocks with the transition before each; the final norm is
  rebuilt for the narrower output;
- EfficientNet / MNASNet / MobileNet (timm's EfficientNet and MobileNetV3 classes): the
  last k MBConv stages and the head convolution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from medtailor.targets import CANDIDATE_TASK, output_count
from medtailor.train.backbones import backbone_in_channels, group_of_parameters, layer_groups
from medtailor.train.heads import create_head
from medtailor.train.init_schemes import apply_init

TRUNCATIONS: list[tuple[tuple[type, ...], Callable[[nn.Module, int], int]]] = []


def register_truncation(*classes: type) -> Callable:
    def decorate(rule: Callable[[nn.Module, int], int]) -> Callable[[nn.Module, int], int]:
        TRUNCATIONS.append((classes, rule))
        return rule

    return decorate


@register_truncation(timm.models.resnet.ResNet)
def truncate_resnet(model: nn.Module, k: int) -> int:
    stages = [f"layer{i}" for i in range(1, 5)]
    for name in stages[len(stages) - k :]:
        setattr(model, name, nn.Identity())
    last = getattr(model, stages[len(stages) - k - 1])
    return last[-1].bn3.num_features if hasattr(last[-1], "bn3") else last[-1].bn2.num_features


@register_truncation(timm.models.densenet.DenseNet)
def truncate_densenet(model: nn.Module, k: int) -> int:
    features = model.features
    blocks = [n for n, _ in features.named_children() if n.startswith("denseblock")]
    for index in range(len(blocks) - k + 1, len(blocks) + 1):
        delattr(features, f"denseblock{index}")
        delattr(features, f"transition{index - 1}")
    kept = getattr(features, f"denseblock{len(blocks) - k}")
    channels = (
        sum(1 for _ in kept.children()) * kept.denselayer1.conv2.out_channels
        + kept.denselayer1.norm1.num_features
    )
    norm = (
        type(features.norm5)(channels) if hasattr(features, "norm5") else nn.BatchNorm2d(channels)
    )
    features.norm5 = norm
    return channels


@register_truncation(timm.models.efficientnet.EfficientNet, timm.models.mobilenetv3.MobileNetV3)
def truncate_efficientnet(model: nn.Module, k: int) -> int:
    model.blocks = model.blocks[: len(model.blocks) - k]
    model.conv_head = nn.Identity()
    if hasattr(model, "bn2"):
        model.bn2 = nn.Identity()
    if hasattr(model, "norm_head"):
        model.norm_head = nn.Identity()
    last = model.blocks[-1][-1]
    for name in ("bn3", "bn2"):
        if hasattr(last, name):
            return getattr(last, name).num_features
    raise ValueError(f"cannot tell the width of {type(last).__name__}")


def truncate(model: nn.Module, k: int) -> int:
    """Drop the final ``k`` stages in place; return the new feature width."""
    for classes, rule in TRUNCATIONS:
        if isinstance(model, classes):
            width = rule(model, k)
            model.num_features = width
            if hasattr(model, "head_hidden_size"):
                model.head_hidden_size = width
            return width
    raise ValueError(
        f"no truncation rule for {type(model).__name__}; known: {[c for c, _ in TRUNCATIONS]}"
    )


class Classifier(nn.Module):
    """Input normalisation, backbone producing pooled features, then the head.

    Inputs are patches in [0, 1] with ``input_channels`` channels; the model normalises
    them with its backbone's pre-training mean and std and, for ``channel_mode:
    replicate``, repeats a grayscale channel to the three the backbone expects.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, replicate_to: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.replicate_to = replicate_to
        config = timm.data.resolve_data_config({}, model=backbone)
        channels = replicate_to or backbone_in_channels(backbone)
        mean, std = torch.tensor(config["mean"]), torch.tensor(config["std"])
        if len(mean) != channels:  # a 1-channel backbone: the mean of the RGB statistics
            mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
        # Saved with the weights: a model rebuilt from its checkpoint (without pre-trained
        # weights, so without their statistics) must normalise as it was trained.
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.replicate_to:
            x = x.expand(-1, self.replicate_to, *x.shape[2:])
        return self.head(self.backbone((x - self.mean) / self.std))


def apply_unfreezing(model: Classifier, unfreeze: int | str) -> None:
    """Freeze the backbone, then unfreeze its top ``unfreeze`` groups ('all' = everything).
    The head is always trainable."""
    if unfreeze == "all":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return
    n_groups = len(layer_groups(model.backbone))
    first_trainable = n_groups - int(unfreeze)
    owner = group_of_parameters(model.backbone)
    for name, parameter in model.backbone.named_parameters():
        parameter.requires_grad_(owner[name] >= first_trainable)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)


def build_classifier(entry: dict[str, Any], num_classes: int = 2) -> Classifier:
    """The model of one configuration (``models.<name>`` merged with the ``train`` defaults)."""
    backbone = apply_init(entry)
    if int(entry["truncate"]) > 0:
        truncate(backbone, int(entry["truncate"]))
    head = create_head(entry["head"], backbone.num_features, num_classes)
    replicate = (
        3 if entry["channel_mode"] == "replicate" and int(entry["input_channels"]) == 1 else 0
    )
    model = Classifier(backbone, head, replicate_to=replicate)
    apply_unfreezing(model, entry["unfreeze"])
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def classifier_checkpoint(
    model: nn.Module, entry: dict[str, Any], task: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A checkpoint that carries its own configuration (the resolved entry) and task, so the
    model can be rebuilt from the file alone, whatever params.yaml says now."""
    task = task or CANDIDATE_TASK
    return {
        "model": model.state_dict(),
        "config": dict(entry),
        "num_classes": output_count(task),
        "task": dict(task),
        **extra,
    }


def load_classifier(
    path: Any, map_location: str | torch.device = "cpu"
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a classifier from a checkpoint written by ``classifier_checkpoint``; returns
    the model (eval mode, weights loaded) and the checkpoint's other entries."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if "config" not in state:
        raise ValueError(
            f"{path}: checkpoint without its configuration (written by an older medtailor); "
            "retrain the model"
        )
    # The weights come from the file: build without fetching pre-trained ones.
    model = build_classifier({**state["config"], "init": "scratch"}, int(state["num_classes"]))
    model.load_state_dict(state["model"])
    return model.to(map_location).eval(), state
