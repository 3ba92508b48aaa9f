"""Backbone creation and timm's layer groups: the leaf that architecture and init schemes share.

Layer groups are timm's own coarse parameter groups (``model.group_matcher(coarse=True)``:
the stem, then one group per stage, as timm uses them for layer-wise learning-rate
decay), so "unfreeze the top N groups" and "pre-trained up to stage k" mean the same
thing for every timm family.
"""

from __future__ import annotations

from typing import Any

import timm
from timm.models import group_modules
from torch import nn

import medtailor.train.cbr  # noqa: F401  (registers the CBR models with timm)
from medtailor.train.weights import create_pretrained


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


def create_backbone(entry: dict[str, Any], pretrained: bool) -> nn.Module:
    """The timm backbone of a configuration: a timm model name, or a registered search space
    (``medtailor.search.spaces``) whose member ``entry["genotype"]`` is cut from its
    supernet (``init: file:<path>`` names the supernet file)."""
    from medtailor.search.spaces import create_space, is_space

    in_chans = int(entry["input_channels"]) if entry["channel_mode"] == "timm" else 3
    kwargs = {"num_classes": 0, "in_chans": in_chans}
    if is_space(entry["model"]):
        if entry.get("genotype") is None:
            raise ValueError(f"model {entry['model']!r} is a search space: it needs a genotype")
        init = str(entry["init"])
        return create_space(entry["model"]).create_model(
            entry["genotype"],
            pretrained,
            supernet_file=init[len("file:") :] if init.startswith("file:") else None,
            **kwargs,
        )
    if pretrained:
        init = entry["init"]
        return create_pretrained(
            entry["model"], init if init.startswith("file:") else "imagenet", **kwargs
        )
    return timm.create_model(entry["model"], pretrained=False, **kwargs)
