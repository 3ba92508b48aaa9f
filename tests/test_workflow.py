"""Snakemake and DVC describe the same pipeline, lint clean, and rerun only what changed."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import BIN, REPO, run, set_param


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


def imported_modules(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medtailor"):
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("medtailor")}
    return found


def source_closure(package: str) -> set[Path]:
    """Every medtailor source file a stage package executes when imported: its own files,
    the modules they import, and the packages (``__init__.py``) those live in."""
    src = REPO / "src"

    def files_of(module: str) -> list[Path]:
        parts = module.split(".")
        found = []
        for depth in range(2, len(parts) + 1):  # the package inits on the way, not medtailor's
            base = src.joinpath(*parts[:depth])
            if (base / "__init__.py").is_file():
                found.append(base / "__init__.py")
            elif base.with_suffix(".py").is_file():
                found.append(base.with_suffix(".py"))
        return found

    todo = list((src / "medtailor" / package).rglob("*.py"))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += [f for module in imported_modules(path) for f in files_of(module)]
    return seen


def test_dvc_stages_depend_on_every_module_their_code_runs():
    """A change to a shared module (tables.py, imageio.py, patches/store.py, ...) reruns
    every DVC stage whose code imports it, and only those."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    for name, stage in stages.items():
        package = {"train_detector": "detect"}.get(name.partition("@")[0], name.partition("@")[0])
        deps = [REPO / d.def_path for d in stage.deps if d.def_path.startswith("src/")]
        uncovered = {
            str(f.relative_to(REPO))
            for f in source_closure(package)
            if not any(f == d or d in f.parents for d in deps)
        }
        assert not uncovered, f"{name} runs {sorted(uncovered)} but does not depend on it"


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_dvc_reruns_only_what_changed_and_round_trips_through_a_remote(
    project: Path, tmp_path_factory
):
    dvc = str(BIN / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    run([dvc, "init", "-q"], project)
    remote = tmp_path_factory.mktemp("dvc_remote")
    run([dvc, "remote", "add", "-d", "-f", "storage", str(remote)], project)
    first = run([dvc, "repro"], project).stdout
    assert all(f"Running stage '{s}'" in first for s in ("synth", "ingest", "resample", "evaluate"))
    assert "Data and pipelines are up to date" in run([dvc, "status"], project).stdout

    set_param(project, "resample", "order", 1)
    second = run([dvc, "repro"], project).stdout
    assert "Running stage 'resample'" in second and "Running stage 'patches'" in second
    assert "Running stage 'ingest'" not in second and "Running stage 'synth'" not in second

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["lite0_scratch"]["recipe"] = {"learning_rate": 0.01}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run([dvc, "repro"], project).stdout
    assert re.findall(r"Running stage '([\w@]+)'", third) == ["train@lite0_scratch", "evaluate"]
    assert "Running stage" not in run([dvc, "repro"], project).stdout

    # Push to a fresh remote, then pull into a fresh clone: the artefacts come back.
    run([dvc, "push"], project)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"],
        cwd=project,
        check=True,
    )
    clone = tmp_path_factory.mktemp("clone") / "repo"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "data" / "patches").exists()
    run([dvc, "pull"], clone)
    for folder in ("data/resample", "data/patches", "data/models/lite0_scratch", "data/evaluate"):
        assert digest(clone / folder) == digest(project / folder), folder


@pytest.mark.slow
def test_snakemake_runs_the_demo_and_reruns_only_what_a_params_change_touches(project: Path):
    snakemake, dvc = str(BIN / "snakemake"), str(BIN / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    run([dvc, "init", "-q"], project)
    run([snakemake, "--cores", "2"], project)
    assert (project / "data" / "resample" / "manifest.parquet").is_file()
    assert "Nothing to be done" in run([snakemake, "-n"], project).stdout
    # Snakemake recorded its work in dvc.lock: DVC agrees nothing is to be done, and a
    # change to an evaluate-only key reruns evaluate alone.
    assert "Data and pipelines are up to date" in run([dvc, "status"], project).stdout
    set_param(project, "evaluate", "confidence_level", 0.9)
    rerun = run([dvc, "repro"], project).stdout
    assert re.findall(r"Running stage '([\w@]+)'", rerun) == ["evaluate"]
    assert "Data and pipelines are up to date" in run([dvc, "status"], project).stdout
    set_param(project, "evaluate", "confidence_level", 0.95)

    set_param(project, "resample", "order", 1)
    jobs = re.findall(r"^rule (\w+):", run([snakemake, "-n", "--nocolor"], project).stdout, re.M)
    assert "resample" in jobs and "patches" in jobs
    assert "ingest" not in jobs and "synth" not in jobs

    set_param(project, "resample", "order", 3)
    set_param(project, "patches", "context", 0.25)
    jobs = re.findall(r"^rule (\w+):", run([snakemake, "-n", "--nocolor"], project).stdout, re.M)
    # The patches and everything downstream of them, nothing upstream.
    assert set(jobs) == {"patches", "train", "evaluate", "all"}
