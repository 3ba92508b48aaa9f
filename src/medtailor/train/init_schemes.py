"""Initialisation schemes of the Transfusion study, as a registry of builders.

``init`` in a model configuration is ``<scheme>`` or ``<scheme>:<argument>``:
- ``imagenet``: pre-trained weights (offline default for efficientnet_lite0, see weights);
- ``file:<path>``: pre-trained weights from a local state dict;
- ``scratch``: timm's own random initialisation;
- ``mean_var``: every parameter tensor re-drawn i.i.d. from a normal with the mean and
  variance of its pre-trained values (batch-norm running statistics reset);
- ``transfuse:<k>``: pre-trained stem and stages 1..k, random above (stages are timm's
  coarse layer groups);
- ``gabor_conv1``: random, with the first convolution set to synthetic Gabor filters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medtailor.train.backbones import create_backbone, group_of_parameters

INIT_SCHEMES: dict[str, Callable[[dict[str, Any], str], nn.Module]] = {}


def register_init(name: str) -> Callable:
    def decorate(builder: Callable[[dict[str, Any], str], nn.Module]) -> Callable:
        INIT_SCHEMES[name] = builder
        return builder

    return decorate


def apply_init(entry: dict[str, Any]) -> nn.Module:
    scheme, _, argument = str(entry["init"]).partition(":")
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {entry['init']!r}; schemes: {sorted(INIT_SCHEMES)}")
    return INIT_SCHEMES[scheme](entry, argument)


@register_init("imagenet")
@register_init("file")
def pretrained(entry: dict[str, Any], _: str) -> nn.Module:
    return create_backbone(entry, pretrained=True)


@register_init("scratch")
def scratch(entry: dict[str, Any], _: str) -> nn.Module:
    return create_backbone(entry, pretrained=False)


@register_init("mean_var")
def mean_var(entry: dict[str, Any], _: str) -> nn.Module:
    model = create_backbone({**entry, "init": "imagenet"}, pretrained=True)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.numel() > 1:
                mean, std = parameter.mean().item(), parameter.std().item()
                parameter.normal_(mean, std)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return model


@register_init("transfuse")
def transfuse(entry: dict[str, Any], argument: str) -> nn.Module:
    if not argument.isdigit():
        raise ValueError(
            f"transfuse needs a stage number, as in transfuse:2 (got {entry['init']!r})"
        )
    keep_up_to = int(argument)
    model = create_backbone(entry, pretrained=False)
    source = create_backbone({**entry, "init": "imagenet"}, pretrained=True).state_dict()
    owner = group_of_parameters(model)
    state = model.state_dict()
    for name in state:
        group = owner.get(name, owner.get(name.rsplit(".", 1)[0] + ".weight"))
        if group is not None and group <= keep_up_to:
            state[name] = source[name]
    model.load_state_dict(state)
    return model


def gabor_bank(out_channels: int, in_channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Gabor filters at evenly spread orientations, 3 wavelengths and 2 phases,
    zero-mean and scaled to the He-normal standard deviation of the layer."""
    height, width = size
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) - (height - 1) / 2,
        torch.arange(width, dtype=torch.float64) - (width - 1) / 2,
        indexing="ij",
    )
    filters = []
    for index in range(out_channels):
        theta = math.pi * (index % 8) / 8
        wavelength = max(height, width) / (1.5 + (index // 8) % 3)
        phase = 0.0 if (index // 24) % 2 == 0 else math.pi / 2
        sigma = 0.56 * wavelength
        x_rot = xs * math.cos(theta) + ys * math.sin(theta)
        y_rot = -xs * math.sin(theta) + ys * math.cos(theta)
        kernel = torch.exp(-(x_rot**2 + (0.5 * y_rot) ** 2) / (2 * sigma**2)) * torch.cos(
            2 * math.pi * x_rot / wavelength + phase
        )
        kernel = kernel - kernel.mean()
        filters.append(kernel / (kernel.std() + 1e-12))
    bank = torch.stack(filters)[:, None].repeat(1, in_channels, 1, 1)
    std = math.sqrt(2.0 / (in_channels * height * width))
    return (bank * std).float()


@register_init("gabor_conv1")
def gabor_conv1(entry: dict[str, Any], _: str) -> nn.Module:
    model = create_backbone(entry, pretrained=False)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        first.weight.copy_(
            gabor_bank(first.out_channels, first.in_channels // first.groups, first.kernel_size)
        )
    return model
