"""``medtailor export``: a trained classifier as TorchScript or ONNX whose outputs match
PyTorch's; a file that does not is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medtailor.export import ExportError, example_batch, export_classifier
from medtailor.train.architecture import build_classifier, classifier_checkpoint

from .conftest import BIN, run
from .tiny_store import TINY_ENTRY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small classifier's folder as train writes it (weights not at their init)."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    folder.mkdir()
    torch.manual_seed(0)
    model = build_classifier(TINY_ENTRY, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    task = {"task": "binary", "classes": ["0", "1"], "samples": "whole_image"}
    torch.save(classifier_checkpoint(model.eval(), TINY_ENTRY, task), folder / "best.pt")
    return folder, model


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_exported_classifier_reproduces_pytorch(tmp_path, trained, fmt):
    folder, model = trained
    out = tmp_path / fmt
    said = run(
        [str(BIN / "medtailor"), "export", "--model", str(folder), "--format", fmt, "--output",
         str(out)],
        tmp_path,
    ).stdout  # fmt: skip
    record = json.loads((out / "export.json").read_text())
    assert record["max_abs_difference"] < 1e-4 and "differ from PyTorch's" in said
    assert record["input"]["shape"] == ["batch", 1, 32, 32] and record["classes"] == ["0", "1"]
    # Another batch, of another size (the batch axis is free).
    images = example_batch(TINY_ENTRY, 7, seed=3)
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    if fmt == "torchscript":
        got = torch.jit.load(str(out / record["file"])).eval()(images).detach().numpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / record["file"]))
        got = session.run(["logits"], {"image": images.numpy()})[0]
    assert np.max(np.abs(got - expected)) < 1e-4


def test_an_export_that_does_not_match_is_not_kept(tmp_path, trained, monkeypatch):
    import medtailor.export as export

    folder, _ = trained
    real = export.write_torchscript
    monkeypatch.setattr(
        export, "write_torchscript", lambda model, x, path: real(model, x, path) + 1e-2
    )
    with pytest.raises(ExportError, match=r"differ from PyTorch.s by 0\.01"):
        export_classifier(folder, "torchscript", tmp_path)
    assert not (tmp_path / "tiny.pt").exists()
