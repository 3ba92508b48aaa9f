"""Snakemake and DVC describe the same pipeline, lint clean, and rerun only what changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, small

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def snakemake_jobs(cwd: Path) -> dict[str, dict]:
    """Rule -> inputs, outputs and shell command, from a forced dry run."""
    out = run([str(BIN / "snakemake"), "--forceall", "-n", "--nocolor"], cwd).stdout
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", out)[1:]:
        name = re.match(r"rule (\w+):", block).group(1)
        wildcard = re.search(r"^\s+wildcards: \w+=(\S+)$", block, re.M)
        if wildcard:  # one DVC foreach stage per wildcard value: train@<model>
            name = f"{name}@{wildcard.group(1)}"
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs[name] = {
            "input": set(fields.get("input", "").split(", ")) - {""},
            "output": set(fields.get("output", "").split(", ")) - {""},
            "cmd": re.sub(r" > logs/\S+ 2>&1$", "", shell.group(1)) if shell else None,
        }
    return jobs


def snakemake_params() -> dict[str, set[str]]:
    """Rule -> dotted params keys it passes (``config["a"]["b"]`` is ``a.b``;
    ``config["models"][wildcards.model]`` is ``models.{model}``)."""
    found: dict[str, set[str]] = {}
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule \w+:)", path.read_text()):
            name = re.match(r"rule (\w+):", block)
            section = re.search(r"\n    params:\n(.*?)\n    \w+:", block, re.S)
            if name and section:
                keys = re.findall(r'config((?:\[(?:"\w+"|wildcards\.\w+)\])+)', section.group(1))
                found[name.group(1)] = {
                    ".".join(
                        re.sub(r"wildcards\.(\w+)", r"{\1}", p).strip('"')
                        for p in re.findall(r"\[([^\]]+)\]", k)
                    )
                    for k in keys
                }
    return found


def test_snakemake_lint_reports_nothing():
    result = run([str(BIN / "snakemake"), "--lint"], REPO)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_snakefmt_is_clean():
    run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"], REPO)


def test_dvc_yaml_mirrors_the_snakemake_rules():
    from dvc.repo import Repo

    jobs = snakemake_jobs(REPO)
    jobs.pop("all")
    rule_params = snakemake_params()
    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    assert set(stages) == set(jobs)
    for name, stage in stages.items():
        job = jobs[name]
        assert stage.cmd == job["cmd"], name
        outs = {o.def_path for o in stage.outs}
        assert outs == job["output"], name
        data_deps = {
            d.def_path for d in stage.deps if not d.def_path.startswith(("src/", "params.yaml"))
        }
        # A DVC dependency on a folder stands for the Snakemake inputs inside it (the
        # evaluate stage reads every model's folder under data/models).
        covered = {
            next((d for d in data_deps if path == d or path.startswith(d + "/")), path)
            for path in job["input"]
        }
        assert covered == data_deps, name
        params = {key for d in stage.deps if d.def_path == "params.yaml" for key in d.params}
        rule, _, value = name.partition("@")
        expected = {key.replace("{model}", value) for key in rule_params[rule]}
        assert params == expected, name


@pytest.fixture()
def project(tmp_path: Path, repo_params: dict) -> Path:
    for name in ["Snakefile", "dvc.yaml", "workflow", "profiles", "envs", "src"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small(repo_params), sort_keys=False))
    return tmp_path


def set_param(project: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_dvc_repro_reruns_only_what_a_params_change_touches(project: Path):
    run([str(BIN / "dvc"), "init", "--no-scm", "-q"], project)
    first = run([str(BIN / "dvc"), "repro"], project).stdout
    assert all(f"Running stage '{s}'" in first for s in ("synth", "ingest", "resample"))
    assert "Data and pipelines are up to date" in run([str(BIN / "dvc"), "status"], project).stdout

    set_param(project, "resample", "order", 1)
    second = run([str(BIN / "dvc"), "repro"], project).stdout
    assert "Running stage 'resample'" in second and "Running stage 'patches'" in second
    assert "Running stage 'ingest'" not in second and "Running stage 'synth'" not in second

    set_param(project, "patches", "context", 0.25)
    third = run([str(BIN / "dvc"), "repro"], project).stdout
    assert re.findall(r"Running stage '(\w+)'", third) == ["patches"]

    fourth = run([str(BIN / "dvc"), "repro"], project).stdout
    assert "Running stage" not in fourth


@pytest.mark.slow
def test_snakemake_runs_the_demo_and_reruns_only_what_a_params_change_touches(project: Path):
    snakemake = str(BIN / "snakemake")
    run([snakemake, "--cores", "2"], project)
    assert (project / "data" / "resample" / "manifest.parquet").is_file()
    assert "Nothing to be done" in run([snakemake, "-n"], project).stdout

    set_param(project, "resample", "order", 1)
    jobs = re.findall(r"^rule (\w+):", run([snakemake, "-n", "--nocolor"], project).stdout, re.M)
    assert "resample" in jobs and "patches" in jobs
    assert "ingest" not in jobs and "synth" not in jobs

    set_param(project, "resample", "order", 3)
    set_param(project, "patches", "context", 0.25)
    jobs = re.findall(r"^rule (\w+):", run([snakemake, "-n", "--nocolor"], project).stdout, re.M)
    assert set(jobs) == {"patches", "all"}
