"""ImageNet-1k top-1 accuracy of the pre-trained weights a configuration starts from.

Values are timm's published validation results (``results/results-imagenet.csv`` of
huggingface/pytorch-image-models at commit 0173a139a2c66db3a41ebfe1d8ac4fb02483642e),
copied for the architectures of the CheXtransfer zoo into ``imagenet_top1.csv``, one row
per pre-trained weight (``<architecture>.<tag>``). A configuration's weight is timm's
default tag for its architecture in the installed timm, except for EfficientNet-Lite0/1/2,
whose offline ImageNet weights (``medtailor.train.weights``) are the TensorFlow originals,
``tf_efficientnet_lite<n>.in1k``. A weight the table does not list has no accuracy (NaN):
add its row (from the same table) rather than a guess.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

SOURCE = (
    "https://github.com/huggingface/pytorch-image-models/blob/"
    "0173a139a2c66db3a41ebfe1d8ac4fb02483642e/results/results-imagenet.csv"
)
TABLE = Path(__file__).with_name("imagenet_top1.csv")


@cache
def imagenet_table() -> dict[str, float]:
    frame = pd.read_csv(TABLE)
    return dict(zip(frame["model"], frame["top1"].astype(float), strict=True))


def pretrained_weight(architecture: str) -> str:
    """``<architecture>.<tag>`` of the ImageNet weights an ``imagenet`` init loads."""
    from timm.models import get_pretrained_cfg

    from medtailor.train.weights import LITE_MODELS

    if architecture in LITE_MODELS:
        return f"tf_efficientnet_lite{LITE_MODELS[architecture]}.in1k"
    default = get_pretrained_cfg(architecture)
    tag = getattr(default, "tag", None) if default is not None else None
    return f"{architecture}.{tag}" if tag else architecture


def imagenet_top1(architecture: str) -> float:
    """timm's ImageNet top-1 (%) of the architecture's pre-trained weight; NaN if unlisted."""
    return imagenet_table().get(pretrained_weight(architecture), float("nan"))
