"""The example projects on public data (``medtailor init --example``): each runs through
Snakemake on a small subset (10 patients, or images of each class) with one-epoch
recipes, so the examples never rot. Skipped
when ``../shared`` (the public datasets) is absent."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from medtailor.config import load_params
from medtailor.examples import example_names, load_example, variant_of
from medtailor.examples.datasets import fracture_raw

from .conftest import BIN, SHARED, run

pytestmark = pytest.mark.slow
DATASETS = SHARED / "realdata"


def one_epoch(params: dict) -> dict:
    """Every recipe of the example cut to one epoch (the wiring, not the claim)."""
    if "train_seg" in params:
        params["train_seg"].update(epochs=1, validate_every=1, warmup_epochs=0)
    if params.get("search_seg", {}).get("enabled"):
        params["search_seg"].update(
            budget=3,
            recipe={"epochs": 1, "validate_every": 1},
            supernet_recipe={"epochs": 1, "validate_every": 1},
            final_recipe={"epochs": 1, "validate_every": 1},
            assignments=2,
        )
    if params.get("search", {}).get("enabled"):
        params["search"].update(
            budget=3,
            recipe={"epochs": 1, "warmup_epochs": 0, "bn_recalibration_batches": 1},
            final_recipe={"epochs": 1, "warmup_epochs": 0},
        )
    if "detector" in params:
        params["detector"]["radiograph"].update(epochs=2, validate_every=1)
        if params["detector"].get("cross_validation_folds"):
            params["detector"]["cross_validation_folds"] = 3
        # Two epochs on 18 radiographs pinpoint no fracture of the 2 validation patients:
        # looser labels give every split positives, so the classifiers' wiring runs.
        params["patches"].update(positive_iou=0.1, negative_iou=0.05)
    if "train" in params:
        params["train"].update(epochs=1, warmup_epochs=0)
    for study in params.get("studies", {}).values():
        study["recipe"] = {**study.get("recipe", {}), "epochs": 1, "warmup_epochs": 0}
        # One of each list's levels: every kind of configuration, not every one.
        for key in ("architectures", "small_models", "transfuse_stages"):
            if study.get(key):
                study[key] = study[key][:1]
    params["evaluate"]["bootstrap_replicates"] = 100
    return params


def test_every_example_names_its_study_claim_and_two_scales():
    for name in example_names():
        example = load_example(name)
        assert example["reference"] and example["claim"]
        assert set(example["scales"]) == {"cpu", "study"}


@pytest.mark.parametrize("name", [n for n in example_names() if not variant_of(n)])
def test_an_example_runs_on_a_subset_through_snakemake(tmp_path, name):
    example = load_example(name)
    source = DATASETS / example["dataset"]
    if not source.is_dir():
        pytest.skip(f"{source} is absent (the public datasets are not shipped)")
    project = tmp_path / name
    cmd = [str(BIN / "medtailor"), "init", str(project), "--example", name]
    run([*cmd, "--source", str(source), "--limit", "10"], tmp_path)
    text = (project / "params.yaml").read_text()
    assert text.startswith(f"# Example {name}:") and "Scale: cpu." in text
    # The CPU scale's whole DAG plans (the run below cuts its recipes and budgets).
    planned = run([str(BIN / "snakemake"), "-n", "--cores", "2", "--quiet", "rules"], project)
    jobs = dict(
        (line.split()[0], int(line.split()[1]))
        for line in (planned.stdout + planned.stderr).splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    )
    for rule, least in example.get("expect_jobs", {}).items():
        assert jobs.get(rule, 0) >= least, (rule, jobs)
    if example["dataset"] == "fracture_train":
        # All three of Roboflow's copies of the 10 radiographs: with one copy, two epochs
        # find no fracture of the 2 validation images, and the classifiers refuse a
        # validation split without positives (rightly); with three they find some.
        fracture_raw(source, project / "raw", limit=10)
    params = one_epoch(load_params(project / "params.yaml"))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "snakemake"), "--cores", "2"], project)
    report = (project / "data" / "evaluate" / "report.md").read_text()
    assert report.strip()
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert metrics
    assert "up to date" in run([str(BIN / "dvc"), "status"], project).stdout


def test_the_study_scale_differs_from_the_cpu_scale_and_validates(tmp_path):
    from medtailor.workflow import example_params_text

    for name in example_names():
        example = load_example(name)
        cpu = yaml.safe_load(example_params_text(name, example, example["task"], "cpu"))
        study = yaml.safe_load(example_params_text(name, example, example["task"], "study"))
        assert cpu != study
        for key, value in (example.get("study_scale") or {}).items():
            assert study[key] != cpu[key] or value == {}


def test_a_variant_is_its_base_example_with_its_own_labels(tmp_path):
    """busi-transfer-binary: busi-transfer's settings, BUSI labelled malignant or not."""
    from medtailor.workflow import example_params_text

    assert variant_of("busi-transfer-binary") == "busi-transfer"
    base, variant = load_example("busi-transfer"), load_example("busi-transfer-binary")
    assert variant["cpu"] == base["cpu"] and variant["prepare"] == {"classes": "binary"}
    params = yaml.safe_load(example_params_text("v", variant, variant["task"], "cpu"))
    assert params == yaml.safe_load(example_params_text("v", base, base["task"], "cpu"))
    source = DATASETS / "busi"
    if not source.is_dir():
        pytest.skip(f"{source} is absent (the public datasets are not shipped)")
    project = tmp_path / "binary"
    cmd = [str(BIN / "medtailor"), "init", str(project), "--example", "busi-transfer-binary"]
    run([*cmd, "--source", str(source), "--limit", "2"], tmp_path)
    classes = pd.read_csv(project / "raw" / "annotations" / "classes.csv")
    assert dict(zip(classes["source"].str.split("/").str[0], classes["label"], strict=True)) == {
        "benign": 0,
        "malignant": 1,
        "normal": 0,
    }
