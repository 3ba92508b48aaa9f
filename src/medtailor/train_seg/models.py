"""Registered 3D segmentation networks: ``create_seg_model(entry, ...)`` builds
``seg_models.<name>`` the way timm's ``create_model`` builds a classifier.

A new network is one decorated function here (``@register_seg_model("name")``) taking the
configuration entry and the data facts the planner needs (input channels, classes, voxel
spacing, patch size).

``c2fnas`` is the searched network (``train_seg.c2fnas``): ``levels`` (one level per cell)
and ``operations`` (one per cell, or one for all cells) name it.

``dynunet`` is the strong standard every searched network is compared with: MONAI's
DynUNet planned as nnU-Net plans its 3D full-resolution network. Each level down-samples
an axis by 2 while that axis' spacing is within twice the finest one and its feature map
keeps at least ``2 * min_feature_size`` voxels; a much coarser axis gets kernel 1 until the
other axes have caught up with its spacing. Filters start at ``filters`` and double per
level up to ``max_filters`` (nnU-Net: 32 and 320).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from monai.networks.nets import DynUNet
from torch import nn

from medtailor.train_seg.c2fnas import C2FNet

SegBuilder = Callable[["SegInput", dict[str, Any]], nn.Module]
SEG_MODELS: dict[str, SegBuilder] = {}


@dataclass(frozen=True)
class SegInput:
    """What a segmentation network is planned from: the data, not the configuration."""

    in_channels: int
    num_classes: int  # background included
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]


def register_seg_model(name: str) -> Callable[[SegBuilder], SegBuilder]:
    def decorate(builder: SegBuilder) -> SegBuilder:
        SEG_MODELS[name] = builder
        return builder

    return decorate


def create_seg_model(entry: dict[str, Any], data: SegInput) -> nn.Module:
    if entry["model"] not in SEG_MODELS:
        raise ValueError(
            f"unknown segmentation model {entry['model']!r}; registered: {sorted(SEG_MODELS)}"
        )
    return SEG_MODELS[entry["model"]](data, entry)


@dataclass(frozen=True)
class UNetPlan:
    kernels: list[list[int]]
    strides: list[list[int]]  # the first is the input level's (all 1)
    filters: list[int]


def plan_unet(
    spacing: Sequence[float],
    patch_size: Sequence[int],
    filters: int = 32,
    max_filters: int = 320,
    min_feature_size: int = 4,
    max_downsamplings: int = 5,
) -> UNetPlan:
    """nnU-Net's 3D full-resolution topology for ``patch_size`` voxels of ``spacing`` mm."""
    sizes, spacings = [int(s) for s in patch_size], [float(s) for s in spacing]
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    while len(strides) - 1 < max_downsamplings:
        finest = min(spacings)
        ratio = [s / finest for s in spacings]
        stride = [
            2 if r <= 2 and size >= 2 * min_feature_size and size % 2 == 0 else 1
            for r, size in zip(ratio, sizes, strict=True)
        ]
        if all(s == 1 for s in stride):
            break
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        strides.append(stride)
        sizes = [size // s for size, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
    finest = min(spacings)
    kernels.append([3 if s / finest <= 2 else 1 for s in spacings])
    widths = [min(filters * 2**level, max_filters) for level in range(len(strides))]
    return UNetPlan(kernels, strides, widths)


@register_seg_model("dynunet")
def dynunet(data: SegInput, entry: dict[str, Any]) -> nn.Module:
    plan = plan_unet(
        data.spacing,
        data.patch_size,
        int(entry.get("filters", 32)),
        int(entry.get("max_filters", 320)),
        int(entry.get("min_feature_size", 4)),
        int(entry.get("max_downsamplings", 5)),
    )
    return DynUNet(
        spatial_dims=len(data.patch_size),
        in_channels=data.in_channels,
        out_channels=data.num_classes,
        kernel_size=plan.kernels,
        strides=plan.strides,
        upsample_kernel_size=plan.strides[1:],
        filters=plan.filters,
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        res_block=bool(entry.get("res_block", False)),
    )


@register_seg_model("c2fnas")
def c2fnas(data: SegInput, entry: dict[str, Any]) -> nn.Module:
    levels = entry["levels"]
    operations = entry.get("operations", "3d")
    if isinstance(operations, str):
        operations = [operations] * len(levels)
    net = C2FNet(
        levels,
        operations,
        data.in_channels,
        data.num_classes,
        int(entry.get("filters", 32)),
        int(entry.get("max_level", 3)),
    )
    if any(size % net.size_divisor for size in data.patch_size):
        raise ValueError(
            f"patch size {list(data.patch_size)}: topology {net.levels} needs multiples of "
            f"{net.size_divisor} voxels per axis"
        )
    return net
