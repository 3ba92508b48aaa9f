"""The Slurm profile's resources become the sbatch options users expect, as the Slurm
executor plugin itself builds them (no cluster needed)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
from snakemake_interface_common.exceptions import WorkflowError

from .conftest import BIN, REPO, run, set_param


class Resources(dict):
    """The plugin reads job resources both as ``resources.get(k)`` and ``resources.k``."""

    __getattr__ = dict.get


def job_with(resources: dict, threads: int = 1) -> SimpleNamespace:
    return SimpleNamespace(resources=Resources(resources), threads=threads, is_group=lambda: False)


def dry_run_resources(project, rule: str, target: str) -> dict:
    """The job's resources, and its ``threads`` (absent from the dry run when 1)."""
    out = run(
        [str(BIN / "snakemake"), "-n", "--forceall", "--profile", "slurm", "--cores", "8", target],
        project,
    )
    block = re.search(rf"^rule {rule}:\n(.*?)(?=^\S)", out.stdout, re.M | re.S).group(1)
    line = re.search(r"^\s+resources: (.*)$", block, re.M).group(1)
    resources = {}
    for item in line.split(", "):
        key, _, value = item.partition("=")
        resources[key] = int(value) if value.isdigit() else value
    threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
    resources["threads"] = int(threads.group(1)) if threads else 1
    return resources


def sbatch(resources: dict) -> str:
    params = {
        "run_uuid": "uuid",
        "slurm_logfile": "log",
        "comment_str": "rule_train",
        "account": "",
        "partition": "",
        "workdir": "",
    }
    resources = dict(resources)
    job = job_with(resources, resources.pop("threads"))
    validate_slurm_extra(job)
    return get_submit_command(job, params) + set_gres_string(job)


def test_the_profile_maps_gpus_qos_and_gpu_model_to_sbatch_options(project):
    set_param(project, "compute", "gpus", 1)
    profile = yaml.safe_load((project / "slurm" / "config.yaml").read_text())
    profile["default-resources"]["qos"] = "normal"
    profile["set-resources"] = {"train": {"gpu_model": "a100"}}
    (project / "slurm" / "config.yaml").write_text(yaml.safe_dump(profile))
    resources = dry_run_resources(project, "train", "metrics/train/lite0_scratch.json")
    assert resources["gpu"] == 1 and resources["qos"] == "normal"
    call = sbatch(resources)
    assert "--qos=normal" in call and "--gpus=a100:1" in call
    # The rule's threads (params compute.threads) are the job's CPUs on the cluster.
    assert (
        resources["threads"]
        == 2
        == yaml.safe_load((project / "params.yaml").read_text())["compute"]["threads"]
    )
    assert "--mem 8000" in call and "-t 240" in call and "--cpus-per-task=2" in call
    detector = sbatch(dry_run_resources(project, "train_detector", "data/detector"))
    assert "--gpus=1" in detector and "--qos=normal" in detector


def test_the_shipped_profile_uses_the_plugins_resources_not_slurm_extra():
    text = (REPO / "slurm" / "config.yaml").read_text()
    shipped = yaml.safe_load(text)
    # What the profile suggests in comments must pass the plugin's validation...
    for example in re.findall(r"#\s*slurm_extra: (.*)", text):
        validate_slurm_extra(job_with({"slurm_extra": yaml.safe_load(example)}))
    assert re.search(r"#\s*qos: \w+", text) and "gpu_model" in text
    # ...and what the plugin refuses there is refused, as the docs say.
    with pytest.raises(WorkflowError, match="quality of service"):
        validate_slurm_extra(job_with({"slurm_extra": "'--qos=normal'"}))
    with pytest.raises(WorkflowError, match="GPU allocation"):
        validate_slurm_extra(job_with({"slurm_extra": "--gpus=1"}))
    assert "slurm_extra" not in shipped.get("default-resources", {})
