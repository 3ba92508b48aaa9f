"""Classifier heads on a pooled feature vector (after the RadImageNet transfer study).

A head is one decorated builder: ``@register_head("name")`` makes it available to model
configurations as ``head: {type: name, ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str) -> Callable:
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        HEADS[name] = builder
        return builder

    return decorate


def create_head(spec: dict[str, Any], in_features: int, num_classes: int) -> nn.Module:
    spec = dict(spec)
    name = spec.pop("type")
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; registered heads: {sorted(HEADS)}")
    return HEADS[name](in_features, num_classes, **spec)


def _hidden(in_features: int, hidden_ratio: float) -> int:
    return max(1, round(in_features * hidden_ratio))


def _mlp_tail(in_features: int, hidden: int, num_classes: int, dropout: float) -> list[nn.Module]:
    """Linear -> batch norm -> leaky ReLU -> dropout -> linear."""
    return [
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.LeakyReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    ]


class ConvBranch(nn.Module):
    """1D convolution across the feature vector: conv -> BN -> leaky ReLU -> dropout, then a
    1x1 convolution mixing the filters back to one value per feature (shape preserved)."""

    def __init__(self, filters: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, filters, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm1d(filters),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(filters, 1, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features[:, None, :])[:, 0, :]


class ConvHead(nn.Module):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_ratio: float,
        filters: int,
        kernel_size: int,
        dropout: float,
        skip: bool,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv head kernel_size must be odd, got {kernel_size}")
        self.conv = ConvBranch(filters, kernel_size, dropout)
        self.skip = skip
        self.mlp = nn.Sequential(
            *_mlp_tail(in_features, _hidden(in_features, hidden_ratio), num_classes, dropout)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mixed = self.conv(features)
        # conv_skip merges the features back in by addition (a residual around the conv).
        return self.mlp(features + mixed if self.skip else mixed)


@register_head("linear")
def linear_head(in_features: int, num_classes: int, dropout: float = 0.0, **_: Any) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


@register_head("nonlinear")
def nonlinear_head(
    in_features: int, num_classes: int, hidden_ratio: float = 0.5, dropout: float = 0.5, **_: Any
) -> nn.Module:
    return nn.Sequential(
        *_mlp_tail(in_features, _hidden(in_features, hidden_ratio), num_classes, dropout)
    )


def _conv_builder(skip: bool) -> Callable[..., nn.Module]:
    def build(
        in_features: int,
        num_classes: int,
        hidden_ratio: float = 0.5,
        filters: int = 16,
        kernel_size: int = 3,
        dropout: float = 0.5,
        **_: Any,
    ) -> nn.Module:
        return ConvHead(in_features, num_classes, hidden_ratio, filters, kernel_size, dropout, skip)

    return build


conv_head = register_head("conv")(_conv_builder(skip=False))
conv_skip_head = register_head("conv_skip")(_conv_builder(skip=True))
