"""Classifier = timm backbone (optionally truncated) + a registered head.

Layer groups are timm's own coarse parameter groups (``model.group_matcher(coarse=True)``:
the stem, then one group per stage, as timm uses them for layer-wise learning-rate
decay), so "unfreeze the top N groups" and "pre-trained up to stage k" mean the same
thing for every timm family.

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
from timm.models import group_modules
from torch import nn

import medtailor.train.cbr  # noqa: F401  (registers the CBR models with timm)
from medtailor.train.heads import create_head
from medtailor.train.weights import create_pretrained

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
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.replicate_to:
            x = x.expand(-1, self.replicate_to, *x.shape[2:])
        return self.head(self.backbone((x - self.mean) / self.std))


def backbone_in_channels(backbone: nn.Module) -> int:
    first = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def layer_groups(backbone: nn.Module) -> list[list[str]]:
    """Module names of the backbone's coarse groups, bottom (stem) to top."""
    grouped = group_modules(backbone, backbone.group_matcher(coarse=True))
    return [names for _, names in sorted(grouped.items())]


def _owned_by(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def group_of_parameters(backbone: nn.Module) -> dict[str, int]:
    """Parameter name -> index of its layer group (parameters in no group get the top one)."""
    groups = layer_groups(backbone)
    owner = {}
    for name, _ in backbone.named_parameters():
        module = name.rsplit(".", 1)[0]
        owner[name] = next(
            (i for i, g in enumerate(groups) if _owned_by(module, g)), len(groups) - 1
        )
    return owner


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


def create_backbone(entry: dict[str, Any], pretrained: bool) -> nn.Module:
    in_chans = int(entry["input_channels"]) if entry["channel_mode"] == "timm" else 3
    kwargs = {"num_classes": 0, "in_chans": in_chans}
    if pretrained:
        init = entry["init"]
        return create_pretrained(
            entry["model"], init if init.startswith("file:") else "imagenet", **kwargs
        )
    return timm.create_model(entry["model"], pretrained=False, **kwargs)


def build_classifier(entry: dict[str, Any], num_classes: int = 2) -> Classifier:
    """The model of one configuration (``models.<name>`` merged with the ``train`` defaults)."""
    from medtailor.train.init_schemes import apply_init

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
