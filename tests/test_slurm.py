"""The demo workflow through `--profile slurm` on a real single-node Slurm cluster."""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest

from .conftest import BIN, run, stable_metrics
from .slurm_cluster import SlurmUnavailable, start_cluster, stop_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        started = start_cluster(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as exc:
        pytest.skip(f"no Slurm cluster for the orchestration test: {exc}")
    yield started
    stop_cluster(started)


def test_every_rule_runs_as_a_slurm_job_and_matches_a_local_run(cluster, project, pipeline_run):
    out = run(
        [
            str(BIN / "snakemake"),
            "--cores",
            "2",
            "--profile",
            "slurm",
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--slurm-keep-successful-logs",
        ],
        project,
    )
    submitted = dict(
        re.findall(
            r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/",
            out.stdout + out.stderr,
        )[::-1]
    )
    rules = {rule for rule in submitted.values()}
    assert rules == {
        "synth",
        "ingest",
        "resample",
        "split",
        "train_detector",
        "detect",
        "patches",
        "train",
        "train_seg",
        "evaluate",
    }
    for job_id, rule in submitted.items():
        state = subprocess.run(
            ["scontrol", "show", "job", job_id], capture_output=True, text=True
        ).stdout
        assert "JobState=COMPLETED" in state, (rule, state)
        assert f"rule_{rule}" in state  # Snakemake's comment on the Slurm job
        assert list((project / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob(f"{job_id}.log"))

    # The same params run locally (in a project of their own) gave the same results.
    assert stable_metrics(project) == pipeline_run.metrics
    assert (project / "data/split/split.csv").read_bytes() == pipeline_run.split_csv
    pd.testing.assert_frame_equal(
        pd.read_parquet(project / "data/detect/candidates.parquet"), pipeline_run.candidates
    )
    assert (
        "Nothing to be done"
        in run([str(BIN / "snakemake"), "-n", "--profile", "slurm"], project).stdout
    )
