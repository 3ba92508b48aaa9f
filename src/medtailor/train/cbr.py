"""The CBR family of small CNNs from the Transfusion study (Raghu et al., 2019), in timm's
registry: ``timm.create_model("cbr_small", ...)`` works like any timm name.

Each block is conv -> batch norm -> ReLU -> 3x3 max-pool with stride 2; then global
average pooling and a linear classifier.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import register_model
from torch import nn

CONFIGS = {
    "cbr_large_t": (7, (32, 64, 128, 256, 512)),  # tall
    "cbr_large_w": (7, (64, 128, 256, 512)),  # wide
    "cbr_small": (7, (32, 64, 128, 256)),
    "cbr_tiny": (5, (64, 128, 256, 512)),
}


class CBRNet(nn.Module):
    def __init__(
        self,
        kernel_size: int,
        channels: tuple[int, ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        **_: Any,
    ) -> None:
        super().__init__()
        blocks, previous = [], in_chans
        for width in channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, kernel_size, padding=kernel_size // 2, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, stride=2, padding=1),
                )
            )
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = previous
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(previous, num_classes) if num_classes else nn.Identity()
        self.feature_info = [
            {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"blocks.{i}"}
            for i, c in enumerate(channels)
        ]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^blocks\.0", "blocks": r"^blocks\.(\d+)"}

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cbr(name: str, pretrained: bool, **kwargs: Any) -> CBRNet:
    if pretrained:
        raise ValueError(
            f"{name} has no pre-trained weights (it is trained from scratch in Transfusion)"
        )
    kernel_size, channels = CONFIGS[name]
    return CBRNet(kernel_size, channels, **kwargs)


@register_model
def cbr_large_t(pretrained: bool = False, **kwargs: Any) -> CBRNet:
    return _cbr("cbr_large_t", pretrained, **kwargs)


@register_model
def cbr_large_w(pretrained: bool = False, **kwargs: Any) -> CBRNet:
    return _cbr("cbr_large_w", pretrained, **kwargs)


@register_model
def cbr_small(pretrained: bool = False, **kwargs: Any) -> CBRNet:
    return _cbr("cbr_small", pretrained, **kwargs)


@register_model
def cbr_tiny(pretrained: bool = False, **kwargs: Any) -> CBRNet:
    return _cbr("cbr_tiny", pretrained, **kwargs)
