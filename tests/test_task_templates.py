"""``medtailor init --task``: a project holding one task's blocks plans only that task's
jobs, refuses before any job a stage its data cannot feed, and runs to its report."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from medtailor.config import load_params

from .conftest import BIN, ENV, run, small
from .test_whole_image import write_raw

TASK_JOBS = {
    "detection": {
        "synth", "ingest", "resample", "split", "train_detector", "detect", "patches", "train",
        "evaluate", "all",
    },
    "segmentation": {"synth", "ingest", "resample", "split", "train_seg", "evaluate", "all"},
}  # fmt: skip


def init(folder, *options: str) -> None:
    run([str(BIN / "medtailor"), "init", str(folder), *options], folder.parent)


def planned_jobs(project) -> set[str]:
    plan = run([str(BIN / "snakemake"), "-n", "--nocolor"], project).stdout
    return set(re.findall(r"^rule (\w+):", plan, re.M))


@pytest.mark.parametrize("task", sorted(TASK_JOBS))
def test_a_task_template_holds_its_blocks_and_plans_only_its_jobs(tmp_path, task):
    project = tmp_path / task
    init(project, "--task", task)
    params = load_params(project / "params.yaml")
    other = {"detection": "train_seg", "segmentation": "detector"}[task]
    assert other not in params and "studies" not in params
    assert planned_jobs(project) == TASK_JOBS[task]
    stages = set(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    assert stages == TASK_JOBS[task] - {"all"}


@pytest.mark.parametrize(
    ("task", "table", "key"),
    [
        ("detection", "annotations/boxes.csv", "detector.source: external"),
        ("segmentation", "annotations/labels.csv", "remove the train_seg and seg_models blocks"),
    ],
)
def test_a_stage_the_data_cannot_feed_is_refused_before_any_job(tmp_path, task, table, key):
    """Radiograph PNGs with a classes table but no boxes and no label maps."""
    write_raw(tmp_path / "raw", "binary")
    project = tmp_path / "project"
    init(project, "--task", task, "--input", str(tmp_path / "raw"))
    done = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--nocolor"], cwd=project, env=ENV, capture_output=True,
        text=True,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert str(tmp_path / "raw" / table) in said and key in said, said
    assert not (project / "data").exists()


@pytest.mark.slow
def test_a_segmentation_project_runs_to_its_report_and_dvc_agrees(tmp_path, repo_params):
    project = tmp_path / "project"
    init(project, "--task", "segmentation")
    params = load_params(project / "params.yaml")
    tiny = small(repo_params)
    for block in ("synth", "train_seg", "seg_models"):
        params[block] = tiny[block]
    params["split"]["key"] = tiny["split"]["key"]
    params["evaluate"]["bootstrap_replicates"] = 100
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "snakemake"), "--cores", "2"], project)
    report = (project / "data" / "evaluate" / "report.md").read_text()
    assert "3D segmentation" in report and "dynunet_baseline" in report
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert any(key.startswith("dynunet_baseline_test_dice_") for key in metrics)
    assert not (project / "data" / "patches").exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == {
        "synth", "ingest", "resample", "split", "train_seg@dynunet_baseline", "evaluate",
    }  # fmt: skip
    assert "up to date" in run([str(BIN / "dvc"), "status"], project).stdout

    # The trained network on the project's raw volumes as new scans: its label maps on the
    # original grids are the project's own predictions of the val and test volumes.
    import nibabel as nib
    import numpy as np
    import pandas as pd

    model = project / "data" / "seg_models" / "dynunet_baseline"
    out = tmp_path / "predicted"
    cmd = [str(BIN / "medtailor"), "predict", "--model", str(model), "--input", "data/synth"]
    run([*cmd, "--output", str(out)], project)
    own = sorted((model / "predictions_native").glob("*.nii.gz"))
    assert own
    for path in own:
        new = nib.load(out / "labels" / path.name)
        assert np.array_equal(np.asarray(new.dataobj), np.asarray(nib.load(path).dataobj))
        assert np.allclose(new.affine, nib.load(path).affine)
    findings = pd.read_csv(out / "findings.csv")
    volumes = pd.read_parquet(project / "data" / "ingest" / "manifest.parquet")
    assert set(findings["image_id"]) == set(volumes.loc[volumes["ndim"] == 3, "image_id"])
    assert set(findings["class"]) == {"lesion", "bone"}


@pytest.mark.slow
def test_a_detection_project_runs_to_its_report_and_dvc_agrees(tmp_path, repo_params):
    project = tmp_path / "project"
    init(project, "--task", "detection")
    params = load_params(project / "params.yaml")
    tiny = small(repo_params)
    for block in ("synth", "detector", "patches"):
        params[block] = tiny[block]
    params["train"]["epochs"] = tiny["train"]["epochs"]
    params["split"]["key"] = tiny["split"]["key"]
    params["evaluate"]["bootstrap_replicates"] = 100
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "snakemake"), "--cores", "2"], project)
    models = sorted(params["models"])
    report = (project / "data" / "evaluate" / "report.md").read_text()
    assert all(name in report for name in models) and "3D segmentation" not in report
    # Every classifier is registered in MLflow as <project>-<model>.
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert metrics["registered_models"] == len(models)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == {
        "synth", "ingest", "resample", "split", "train_detector", "detect", "patches",
        *(f"train@{name}" for name in models), "evaluate",
    }  # fmt: skip
    assert "up to date" in run([str(BIN / "dvc"), "status"], project).stdout
