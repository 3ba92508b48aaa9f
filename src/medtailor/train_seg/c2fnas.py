"""The C2FNAS network: a single-path U of cells whose topology and operations are searched.

A network is ``levels`` (one resolution level per cell, the topology code the coarse search
clusters) and ``operations`` (one of :data:`OPERATIONS` per cell, what the fine search
picks). Level 0 is half the input resolution (the input stem down-samples once); every
level below halves it again and doubles the filters.

- input stem: 3x3x3 convolution (stride 1), then 3x3x3 convolution (stride 2) to level 0;
- cell ``i`` (node ``i``; node 0 is the stem's output): the previous node, brought to the
  cell's level by a stride-2 3x3x3 convolution (down), trilinear x2 then 1x1x1 convolution
  (up) or a 1x1x1 convolution (same level), plus, through a 1x1x1 convolution, the
  previous-previous node when it is at the cell's level, or else, for a cell that
  up-samples, the encoder skip (the latest earlier node at its level). The sum goes
  through the cell's operation;
- output stem: trilinear x2, then two 3x3x3 convolutions (the last one to the classes).

Blocks are MONAI's (act -> conv -> norm, instance norm and ReLU, as in DiNTS). A cell that
holds several operations is a single-path supernet cell: :meth:`C2FNet.set_path` picks the
one that runs, so one module serves the fine search's supernet and the final network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dints_block import (
    ActiConvNormBlock,
    FactorizedIncreaseBlock,
    P3DActiConvNormBlock,
)
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from medtailor.search_seg.space import OPERATIONS

NORM = ("INSTANCE", {"affine": True})
ACT = "RELU"
HE_NEGATIVE_SLOPE = 0.01  # nnU-Net's InitWeights_He(1e-2)


def validate_levels(levels: Sequence[int], max_level: int = 3) -> list[int]:
    """``levels`` as a list, or a ValueError saying which cell breaks the U."""
    levels = [int(level) for level in levels]
    previous = 0
    for cell, level in enumerate(levels):
        if abs(level - previous) > 1:
            raise ValueError(f"cell {cell} jumps from level {previous} to {level}")
        if not 0 <= level <= max_level:
            raise ValueError(f"cell {cell} is at level {level}, outside 0..{max_level}")
        previous = level
    if levels and levels[-1] != 0:
        raise ValueError(f"the last cell is at level {levels[-1]}; the U must end at level 0")
    return levels


def secondary_inputs(levels: Sequence[int]) -> list[int | None]:
    """Per cell, the earlier node it also reads (node 0 is the stem), or None."""
    nodes = [0, *levels]
    found: list[int | None] = []
    for node in range(1, len(nodes)):
        level = nodes[node]
        if node >= 2 and nodes[node - 2] == level:
            found.append(node - 2)
        elif level < nodes[node - 1]:  # up-sampling: the encoder's last node at this level
            earlier = [j for j in range(node - 1) if nodes[j] == level]
            found.append(earlier[-1] if earlier else None)
        else:
            found.append(None)
    return found


def act_conv_norm(
    in_channels: int, out_channels: int, kernel_size: Sequence[int] | int, stride: int = 1
) -> nn.Sequential:
    """MONAI's act -> conv -> norm for the kernels its blocks do not offer (2D, strided)."""
    kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
    return nn.Sequential(
        get_act_layer(ACT),
        Conv[Conv.CONV, 3](
            in_channels,
            out_channels,
            kernel_size=kernel,
            stride=stride,
            padding=tuple(k // 2 for k in kernel),
            bias=False,
        ),
        get_norm_layer(NORM, spatial_dims=3, channels=out_channels),
    )


def operation(name: str, channels: int) -> nn.Module:
    if name == "3d":
        return ActiConvNormBlock(
            channels, channels, 3, 1, spatial_dims=3, act_name=ACT, norm_name=NORM
        )
    if name == "p3d":  # 3x3x1 then 1x1x3
        return P3DActiConvNormBlock(channels, channels, 3, 1, mode=0, act_name=ACT, norm_name=NORM)
    if name == "2d":
        return act_conv_norm(channels, channels, (3, 3, 1))
    raise ValueError(f"unknown operation {name!r}; choose from {OPERATIONS}")


class Cell(nn.Module):
    def __init__(
        self,
        in_level: int,
        level: int,
        channels: Sequence[int],
        reads_secondary: bool,
        operations: Sequence[str],
    ) -> None:
        super().__init__()
        width, previous = channels[level], channels[in_level]
        if level == in_level + 1:
            self.primary: nn.Module = act_conv_norm(previous, width, 3, stride=2)
        elif level == in_level - 1:
            self.primary = FactorizedIncreaseBlock(previous, width, 3, ACT, NORM)
        else:
            self.primary = ActiConvNormBlock(previous, width, 1, 0, 3, ACT, NORM)
        self.secondary = (
            ActiConvNormBlock(width, width, 1, 0, 3, ACT, NORM) if reads_secondary else None
        )
        self.ops = nn.ModuleDict({name: operation(name, width) for name in operations})
        self.active = operations[0]

    def forward(self, previous: torch.Tensor, earlier: torch.Tensor | None) -> torch.Tensor:
        x = self.primary(previous)
        if self.secondary is not None:
            x = x + self.secondary(earlier)
        return self.ops[self.active](x)


class C2FNet(nn.Module):
    def __init__(
        self,
        levels: Sequence[int],
        operations: Sequence[str | Sequence[str]],
        in_channels: int,
        num_classes: int,
        filters: int = 32,
        max_level: int = 3,
    ) -> None:
        super().__init__()
        self.levels = validate_levels(levels, max_level)
        if len(operations) != len(self.levels):
            raise ValueError(
                f"{len(operations)} operations for {len(self.levels)} cells: give one per cell"
            )
        choices = [[op] if isinstance(op, str) else list(op) for op in operations]
        for cell_ops in choices:
            for name in cell_ops:
                if name not in OPERATIONS:
                    raise ValueError(f"unknown operation {name!r}; choose from {OPERATIONS}")
        channels = [filters * 2**level for level in range(max_level + 1)]
        self.stem = nn.Sequential(
            Conv[Conv.CONV, 3](in_channels, filters // 2, kernel_size=3, padding=1, bias=False),
            get_norm_layer(NORM, spatial_dims=3, channels=filters // 2),
            act_conv_norm(filters // 2, filters, 3, stride=2),
        )
        self.reads = secondary_inputs(self.levels)
        nodes = [0, *self.levels]
        self.cells = nn.ModuleList(
            Cell(nodes[i], nodes[i + 1], channels, self.reads[i] is not None, choices[i])
            for i in range(len(self.levels))
        )
        self.head = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
            ActiConvNormBlock(filters, filters // 2, 3, 1, 3, ACT, NORM),
            get_act_layer(ACT),
            Conv[Conv.CONV, 3](filters // 2, num_classes, kernel_size=3, padding=1),
        )
        # The input must halve cleanly down to the deepest level the topology reaches.
        self.size_divisor = 2 ** (1 + max(self.levels, default=0))
        # He initialisation of every convolution, the classifier's included, as nnU-Net and
        # MONAI's DynUNet start theirs. With PyTorch's default (a variance six times
        # smaller) the demo's searched network ended below lesion Dice 0.3 in 3 of 9 seeds;
        # with He in none; He everywhere but the classifier failed one of those seeds again
        # (docs/benchmarks.md, bench/seg_seed_robustness.py).
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, a=HE_NEGATIVE_SLOPE)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def choices(self) -> list[list[str]]:
        return [list(cell.ops) for cell in self.cells]

    def set_path(self, path: Sequence[str]) -> None:
        """Run ``path[i]`` in cell ``i`` (single-path supernet sampling and scoring)."""
        for cell, name in zip(self.cells, path, strict=True):
            if name not in cell.ops:
                raise ValueError(f"cell holds {list(cell.ops)}, not {name!r}")
            cell.active = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(size % self.size_divisor for size in x.shape[2:]):
            raise ValueError(
                f"input of spatial size {tuple(x.shape[2:])}: this topology needs multiples "
                f"of {self.size_divisor}"
            )
        nodes = [self.stem(x)]
        for cell, earlier in zip(self.cells, self.reads, strict=True):
            nodes.append(cell(nodes[-1], None if earlier is None else nodes[earlier]))
        return self.head(nodes[-1])
