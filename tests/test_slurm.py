"""The demo workflow through `--profile slurm` on a real single-node Slurm cluster."""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest

from .conftest import BIN, run
from .slurm_cluster import SlurmUnavailable, start_cluster, stop_cluster

pytestmark = pytest.mark.slow
TIMING = re.compile(r"seconds|per_second|_per_s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        started = start_cluster(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as exc:
        pytest.skip(f"no Slurm cluster for the orchestration test: {exc}")
    yield started
    stop_cluster(started)


def stable_metrics(root):
    """Every metrics file, without the timings that differ from run to run."""
    found = {}
    for path in sorted((root / "metrics").rglob("*.json")):
        values = json.loads(path.read_text())
        found[str(path.relative_to(root))] = {
            k: v for k, v in values.items() if not TIMING.search(k)
        }
    return found


def test_every_rule_runs_as_a_slurm_job_and_matches_a_local_run(cluster, project, tmp_path_factory):
    local = tmp_path_factory.mktemp("local_copy")
    subprocess.run(["cp", "-r", f"{project}/.", str(local)], check=True)
    run([str(BIN / "snakemake"), "--cores", "2"], local)

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

    assert stable_metrics(project) == stable_metrics(local)
    for table in ("data/split/split.csv",):
        assert (project / table).read_bytes() == (local / table).read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(project / "data/detect/candidates.parquet"),
        pd.read_parquet(local / "data/detect/candidates.parquet"),
    )
    assert (
        "Nothing to be done"
        in run([str(BIN / "snakemake"), "-n", "--profile", "slurm"], project).stdout
    )
