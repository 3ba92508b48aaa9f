"""Snakemake and DVC describe the same pipeline, lint clean, and rerun only what changed."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from medtailor.config.stage_keys import stage_keys
from medtailor.workflow.dvc_stages import COMPUTE_STAGES

from .conftest import BIN, REPO, PipelineRun, run, set_param


def snakemake_jobs(cwd: Path) -> dict[str, dict]:
    """Rule -> inputs, outputs and shell command, from a forced dry run."""
    out = run([str(BIN / "snakemake"), "--forceall", "-n", "--nocolor"], cwd).stdout
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", out)[1:]:
        name = re.match(r"rule (\w+):", block).group(1)
        wildcard = re.search(r"^\s+wildcards: (.+)$", block, re.M)
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", wildcard.group(1))) if wildcard else {}
        if wildcard:  # one DVC foreach stage per wildcard value: train@<model>
            name = f"{name}@{'_'.join(wildcards.values())}"
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        # Threads: compared apart (DVC passes compute.threads to the stages that train).
        cmd = re.sub(r" --threads \d+", "", shell.group(1)) if shell else None
        jobs[name] = {
            "input": set(fields.get("input", "").split(", ")) - {""},
            "output": set(fields.get("output", "").split(", ")) - {""},
            "cmd": re.sub(r" > logs/\S+ 2>&1$", "", cmd) if cmd else None,
            "wildcards": wildcards,
        }
    return jobs


def snakemake_params() -> dict[str, str]:
    """Rule -> the stage whose keys its ``reads`` param passes (``stage_values(config, stage``)."""
    found: dict[str, str] = {}
    for path in (REPO / "src" / "medtailor" / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule \w+:)", path.read_text()):
            name = re.match(r"rule (\w+):", block)
            keys = re.search(r'^        reads=.*stage_values\(config, "(\w+)"', block, re.M)
            # A study configuration's job reads its own expanded entry (medtailor.study).
            per_configuration = re.search(r"^        reads=.*configuration_values\(", block, re.M)
            if name:
                found[name.group(1)] = (
                    keys.group(1) if keys else "study_train" if per_configuration else ""
                )
    return found


def test_snakemake_lint_reports_nothing():
    result = run([str(BIN / "snakemake"), "--lint"], REPO)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_the_root_exposes_the_packaged_workflow_and_its_environment():
    """workflow/ and envs/ beside Snakefile, dvc.yaml and params.yaml, as Snakemake's
    catalog lays a workflow out: the packaged workflow, run on the root's params.yaml."""
    import shutil

    from medtailor.workflow import SNAKEFILE

    assert (REPO / "workflow" / "Snakefile").resolve() == Path(SNAKEFILE).resolve()
    assert sorted(p.name for p in (REPO / "workflow" / "rules").glob("*.smk"))
    env = REPO / "envs" / "medtailor.yaml"
    # Every rule's conda: directive names the root's environment file.
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    relative = re.search(r'^ENV = "(.+)"$', common, re.M).group(1)
    assert (REPO / "workflow" / "rules" / relative).resolve() == env.resolve()
    plan = run(
        [str(BIN / "snakemake"), "-s", "workflow/Snakefile", "--configfile", "params.yaml", "-n"],
        REPO,
    ).stdout
    assert "rule evaluate:" in plan
    if shutil.which("conda"):  # not on this repository's CI machines
        run([str(BIN / "snakemake"), "--sdm", "conda", "-n"], REPO)


def test_snakefmt_is_clean():
    run([str(BIN / "snakefmt"), "--check", "Snakefile", "src/medtailor/workflow"], REPO)


def test_dvc_yaml_mirrors_the_snakemake_rules():
    from dvc.repo import Repo

    jobs = snakemake_jobs(REPO)
    jobs.pop("all")
    # The search's generations are Snakemake jobs (ask, candidates, tell); DVC runs the
    # same steps on the same files in its one `search` stage.
    steps = {n: jobs.pop(n) for n in list(jobs) if re.match(r"search_(ask|candidate|tell)@", n)}
    assert steps, "the search is not in the default pipeline"
    assert all(
        o.startswith(("data/search/g", "metrics/search/g"))
        for job in steps.values()
        for o in job["output"]
    )
    jobs["search"] = {
        "input": {i for job in steps.values() for i in job["input"]}
        - {o for job in steps.values() for o in job["output"]},
        "output": {"data/search"},
        "cmd": "medtailor search --params params.yaml --input data/patches --resample "
        "data/resample --split data/split/split.csv --state data/search_state --output "
        "data/search --metrics metrics/search.json",
    }
    # The same for the segmentation search's coarse generations and its `search_seg` stage.
    seg_steps = {
        n: jobs.pop(n) for n in list(jobs) if re.match(r"search_seg_(ask|candidate|tell)@", n)
    }
    assert seg_steps, "the segmentation search is not in the default pipeline"
    jobs["search_seg"] = {
        "input": {i for job in seg_steps.values() for i in job["input"]}
        - {o for job in seg_steps.values() for o in job["output"]},
        "output": {"data/search_seg"},
        "cmd": "medtailor search-seg --params params.yaml --input data/resample --split "
        "data/split/split.csv --state data/search_seg_state --output data/search_seg "
        "--metrics metrics/search_seg.json",
    }
    rule_params = snakemake_params()
    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    assert set(stages) == set(jobs)
    threads = yaml.safe_load((REPO / "params.yaml").read_text())["compute"]["threads"]
    for name, stage in stages.items():
        job = jobs[name]
        assert re.sub(r" --threads \d+", "", stage.cmd) == job["cmd"], name
        if name.partition("@")[0] in COMPUTE_STAGES:
            assert f" --threads {threads} " in stage.cmd, name
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
        # Both depend on exactly the keys the stage reads (medtailor.config.stage_keys).
        params = {key for d in stage.deps if d.def_path == "params.yaml" for key in d.params}
        rule, _, model = name.partition("@")
        study = job.get("wildcards", {}).get("study")
        # (DVC's one-process search stages read the keys each of their rules passes.)
        one_process = rule if rule in ("search", "search_seg") else None
        assert rule_params.get(rule, one_process) == rule, (
            f"rule {rule} passes another stage's keys"
        )
        if study:  # DVC depends on the study's block, Snakemake on each configuration's entry
            assert params == set(stage_keys(rule, study=study)), name
            continue
        assert params == set(stage_keys(rule, model or None)), name


def test_dvc_yaml_is_the_generated_one():
    """dvc.yaml is written by medtailor.workflow.dvc_stages from the stage table, the params keys of
    medtailor.config.stage_keys and each stage's source closure: regenerate, never edit."""
    from medtailor.workflow.dvc_stages import dvc_pipeline

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert yaml.safe_load((REPO / "dvc.yaml").read_text()) == dvc_pipeline(params, REPO), (
        "dvc.yaml is stale: run `python -m medtailor.workflow.dvc_stages`"
    )


def test_dvc_stages_depend_on_every_module_their_code_runs():
    """A change to a shared module reruns every DVC stage whose code imports it: the train
    stage reads the patch store (patches/store.py), evaluate rebuilds models (train/),
    and every stage that reads tables runs tables.py."""
    from medtailor.workflow.dvc_stages import code_dependencies, source_closure

    src = REPO / "src"
    assert src / "medtailor" / "patches" / "store.py" in source_closure(src, "train")
    assert "src/medtailor/patches" in code_dependencies(REPO, "train")
    assert "src/medtailor/train" in code_dependencies(REPO, "evaluate")
    assert "src/medtailor/tables.py" in code_dependencies(REPO, "resample")
    assert "src/medtailor/detect" not in code_dependencies(REPO, "train")


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_copied_project_finds_its_finished_stages_up_to_date(project_with_patches: Path):
    """A project copied with its files' times (``cp -a`` to another disk) keeps Snakemake's
    records: nothing up to the patches runs again, and a params change still reruns what it
    touches."""
    project, snakemake = project_with_patches, str(BIN / "snakemake")
    assert "Nothing to be done" in run([snakemake, "-n", "data/patches"], project).stdout
    set_param(project, "patches", "context", 0.25)
    plan = run([snakemake, "-n", "--nocolor", "data/patches"], project).stdout
    assert re.findall(r"^rule (\w+):", plan, re.M) == ["patches"]


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
    # `dvc repro` has a parent run as a Snakemake invocation has: its stages share it, and
    # it ends FINISHED with the last of them.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medtailor").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("medtailor.driver") == "dvc repro"]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline"
    stages = [r for r in runs if r.data.tags.get("medtailor.stage") not in (None, "pipeline")]
    assert len(stages) >= 8
    assert {r.data.tags.get("mlflow.parentRunId") for r in stages} == {parent.info.run_id}
    assert all(r.data.tags["git_dirty"] in {"true", "false"} for r in stages)
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


def peak_threads(snakemake_log: str, rule: str = r"\w+") -> tuple[int, int]:
    """(most threads running at once, most jobs running at once) in a Snakemake log, over
    the jobs of ``rule`` (a regex): each job block opens with ``rule <name>:`` and closes
    with ``Finished jobid: <id>``."""
    running: dict[str, int] = {}
    peak = peak_jobs = 0
    for block in re.split(r"\n(?=\[)", snakemake_log):
        started = re.search(rf"^(?:local)?rule {rule}:$", block, re.M)
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
        if started and jobid:
            threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
            running[jobid.group(1)] = int(threads.group(1)) if threads else 1
            peak, peak_jobs = max(peak, sum(running.values())), max(peak_jobs, len(running))
        for done in re.findall(r"^Finished jobid: (\d+)", block, re.M):
            running.pop(done, None)
    return peak, peak_jobs


def test_peak_threads_reads_overlapping_jobs_from_a_snakemake_log():
    log = (
        "[t0]\nrule train:\n    jobid: 1\n    threads: 2\n"
        "[t0]\nrule train:\n    jobid: 2\n    threads: 2\n"
        "[t1]\nFinished jobid: 1 (Rule: train)\n[t2]\nFinished jobid: 2 (Rule: train)\n"
        "[t3]\nlocalrule all:\n    jobid: 0\n"
    )
    assert peak_threads(log) == (4, 2)
    one_after_the_other = (
        "[t0]\nrule train:\n    jobid: 1\n    threads: 2\n[t1]\nFinished jobid: 1\n"
        "[t1]\nrule train:\n    jobid: 2\n    threads: 2\n[t2]\nFinished jobid: 2\n"
    )
    assert peak_threads(one_after_the_other) == (2, 1)
    assert peak_threads(log, rule="all") == (1, 1)


def test_init_refuses_a_folder_that_is_already_a_project(tmp_path: Path):
    from medtailor.workflow import ProjectExistsError, init_project

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(ProjectExistsError, match="already a project"):
        init_project(tmp_path)
    assert (tmp_path / "params.yaml").read_text() == "seed: 1\n"


@pytest.mark.slow
def test_a_project_of_your_own_runs_and_reruns_only_what_a_params_change_touches(
    pipeline_run: PipelineRun,
):
    """``medtailor init`` outside the checkout: Snakemake runs the installed workflow, DVC
    works (the folder is a git repository), MLflow runs carry the product version and the
    project's commit, and reruns follow the params keys each stage reads."""
    import mlflow

    from medtailor import __version__

    project = pipeline_run.folder  # this test is its last user: it changes params.yaml
    snakemake, dvc = str(BIN / "snakemake"), str(BIN / "dvc")
    plan = run([snakemake, "-n", "--forceall", "--cores", "2", "--nocolor"], project).stdout
    train_blocks = re.findall(r"^rule train:\n(.*?)(?=^\S)", plan, re.M | re.S)
    assert train_blocks and all(re.search(r"^\s+threads: 2$", b, re.M) for b in train_blocks)
    # Three train jobs of 2 threads each, but never two at once on 2 cores.
    # The run's log (the dry run and the onsuccess handler's --summary write their own).
    (log,) = [
        text
        for path in (project / ".snakemake" / "log").glob("*.snakemake.log")
        if "Finished jobid" in (text := path.read_text())
    ]
    assert peak_threads(log)[0] <= 2
    assert peak_threads(log, rule="train") == (2, 1)
    assert (project / "data" / "resample" / "manifest.parquet").is_file()
    assert "Nothing to be done" in run([snakemake, "-n"], project).stdout

    # A detect-only key reruns detect and what follows it, never the detector's training.
    set_param(project, "detector", "max_candidates_per_image", 50)
    jobs = re.findall(r"^rule (\w+):", run([snakemake, "-n", "--nocolor"], project).stdout, re.M)
    assert set(jobs) == {"detect", "patches", "train", "evaluate", "all"}
    status = run([dvc, "status", "--json"], project).stdout
    changed = set(json.loads(status))
    assert "detect" in changed and "train_detector" not in changed
    set_param(project, "detector", "max_candidates_per_image", 100)

    commit = pipeline_run.commit
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) >= 10  # the pipeline's parent run and one per job
    assert set(runs["tags.medtailor_version"]) == {__version__}
    assert set(runs["tags.git_commit"]) == {commit}
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


def test_recording_in_dvc_lock_follows_params_and_never_fails_a_finished_run(
    tmp_path: Path, repo_params: dict, caplog
):
    """After a successful Snakemake run the hook rewrites dvc.yaml when params.yaml calls
    for other stages (a search disabled since `medtailor init`), and a failure to record
    is a warning, not a failed run (it used to exit 1 after a run that had succeeded)."""
    import logging

    from medtailor.dvc_sync import record_in_dvc_lock
    from medtailor.workflow.dvc_stages import write_dvc_yaml

    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params, sort_keys=False))
    write_dvc_yaml(tmp_path / "dvc.yaml")
    assert "search_summary" in (tmp_path / "dvc.yaml").read_text()
    params = copy.deepcopy(repo_params)
    params["search"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with caplog.at_level(logging.WARNING, logger="medtailor.dvc_sync"):
        assert record_in_dvc_lock(tmp_path) == []  # no Snakefile here: nothing to record
    assert "search_summary" not in (tmp_path / "dvc.yaml").read_text()
    assert "could not record the run in dvc.lock" in caplog.text


def test_init_with_an_input_says_where_the_data_is_read_and_asks_for_a_salt(tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    result = run(
        [str(BIN / "medtailor"), "init", str(tmp_path / "study"), "--input", str(raw)], tmp_path
    )
    assert f"reads your data from {raw} (ingest.input)" in result.stdout
    assert "edit params.yaml (ingest.input" not in result.stdout
    assert "export MEDTAILOR_PSEUDONYM_SALT=" in result.stdout


def test_status_lists_the_stages_the_project_runs_and_each_folder_once(repo_params: dict):
    from medtailor.cli import project_stages

    stages = dict(project_stages(repo_params, Path("data")))
    assert stages["train"] == Path("data/models") and "search-final" not in stages
    folders = [folder for _, folder in project_stages(repo_params, Path("data"))]
    assert len(folders) == len(set(folders))
    params = copy.deepcopy(repo_params)
    params["patches"]["source"] = "whole_image"
    params["search"]["enabled"] = False
    whole_image = dict(project_stages(params, Path("data")))
    assert not {"train-detector", "detect", "search", "search-summary"} & set(whole_image)
    assert {"ingest", "patches", "train", "evaluate"} <= set(whole_image)
