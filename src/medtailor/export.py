"""``medtailor export``: a trained classifier as a deployable file, TorchScript or ONNX,
checked against PyTorch before it is kept.

The exported network maps a batch of images, shaped as the model was trained on them
(``input_channels`` x ``input_size`` x ``input_size``, scaled to [0, 1] as the patch store
scales them), to its logits; ``export.json`` beside it records the input shape, the
classes, the output's meaning and the largest absolute difference from PyTorch's logits
on a random batch. A file whose outputs differ by more than ``TOLERANCE`` is not kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-4
CHECK_BATCH = 4


class ExportError(RuntimeError):
    """The exported network does not reproduce PyTorch's outputs."""


def example_batch(config: dict[str, Any], batch: int, seed: int = 0) -> torch.Tensor:
    """A random batch in the model's input shape and range."""
    size, channels = int(config["input_size"]), int(config["input_channels"])
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=generator)


def write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> np.ndarray:
    """Trace ``model`` to ``path``; returns the reloaded file's logits on ``example``."""
    traced = torch.jit.trace(model, example[:1], check_trace=False)
    traced.save(str(path))
    reloaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return reloaded(example).numpy()


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> np.ndarray:
    """Export ``model`` to ONNX at ``path`` (batch axis dynamic); returns ONNX Runtime's
    logits on ``example``."""
    import onnx
    import onnxruntime

    torch.onnx.export(
        model,
        (example[:1],),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": example.numpy()})[0]


def export_classifier(model_dir: Path, fmt: str, out_dir: Path) -> dict[str, Any]:
    """Write ``model_dir``'s classifier (its ``best.pt``) in ``fmt`` to ``out_dir`` with
    ``export.json``; raise ExportError when its logits differ from PyTorch's by more than
    ``TOLERANCE``."""
    from medtailor.train.architecture import load_classifier

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    checkpoint_file = model_dir / "best.pt"
    if not checkpoint_file.is_file():
        raise FileNotFoundError(f"{checkpoint_file}: no trained classifier in {model_dir}")
    model, checkpoint = load_classifier(checkpoint_file)
    config = checkpoint["config"]
    example = example_batch(config, CHECK_BATCH)
    with torch.no_grad():
        expected = model(example).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model_dir.name}.{'pt' if fmt == 'torchscript' else 'onnx'}"
    writer = write_torchscript if fmt == "torchscript" else write_onnx
    got = writer(model, example, path)
    difference = float(np.max(np.abs(got - expected)))
    if not difference <= TOLERANCE:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"{model_dir.name} as {fmt}: logits differ from PyTorch's by {difference:.3g} "
            f"(more than {TOLERANCE:g}); the file was not kept"
        )
    task = checkpoint.get("task", {})
    record = {
        "model": model_dir.name,
        "format": fmt,
        "file": path.name,
        "input": {
            "shape": ["batch", int(config["input_channels"]), *[int(config["input_size"])] * 2],
            "range": [0.0, 1.0],
        },
        "output": "logits: softmax gives the class probabilities (binary: class 1 is the "
        "positive one); multi-label: one sigmoid per finding",
        "classes": task.get("classes"),
        "max_abs_difference": difference,
        "checked_batch": CHECK_BATCH,
    }
    (out_dir / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
