"""On real fracture radiographs the pre-trained detector beats the from-scratch one
(issue 14's acceptance, in little: the full figures are bench/detector_realdata.py's)."""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import REPO, SHARED

FRACTURES = SHARED / "realdata" / "fracture_train"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FRACTURES / "labels").is_dir(), reason="../shared/realdata absent"),
]


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "detector_realdata", REPO / "bench" / "detector_realdata.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pretrained_detector_finds_more_real_fractures_than_the_shipped_one(tmp_path):
    bench = load_bench()
    # 30 patients (about 100 radiographs) split 80/20 by patient, 10 epochs: the same code
    # path and split rule as the benchmark, on a budget a test can afford.
    counts = bench.prepare(tmp_path, patients=30, epochs=10)
    assert counts["train_images"] > 0 and counts["boxes"] > counts["train_images"] / 2
    scratch = bench.run_config(tmp_path, "resnet10_scratch_fixed")
    pretrained = bench.run_config(tmp_path, "lite0_imagenet_auto")
    assert scratch["val_lesions"] == pretrained["val_lesions"] > 0
    assert pretrained["val_recall"] > scratch["val_recall"], (pretrained, scratch)
