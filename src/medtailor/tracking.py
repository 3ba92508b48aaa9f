"""MLflow wiring shared by every stage: one run per stage execution.

The store defaults to a local ``sqlite:///mlflow.db`` with artefacts beside it;
``MLFLOW_TRACKING_URI`` overrides params. A pipeline driver may export
``MEDTAILOR_PARENT_RUN_ID`` so each stage run becomes its child (Snakemake's onstart
does); under ``dvc repro`` the stages open and share a parent run of their own. Every
run is tagged with the commit and whether the working tree was dirty. A job killed by
SIGTERM (a Slurm time limit) ends its runs KILLED and its parent FAILED. Only
pseudonymous IDs, counts and params are ever logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from medtailor import __version__
from medtailor.config import params_hash

PARENT_RUN_ENV = "MEDTAILOR_PARENT_RUN_ID"
# One run per enabled study under the pipeline run: its configurations' runs are its
# children and its analysis (the `study` job) logs into it.
STUDY_RUN_ENV = "MEDTAILOR_STUDY_RUN_{}"
log = logging.getLogger(__name__)


def _git(*args: str, cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=True, cwd=cwd
        )
        return out.stdout
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(project: Path | None = None) -> str:
    """The commit of the project (``project``'s git repository, or the working
    directory's)."""
    out = _git("rev-parse", "HEAD", cwd=project)
    return out.strip() if out else "unknown"


def git_dirty() -> str:
    """Whether tracked files differ from the commit (the run's code or params are not the
    commit's): "true", "false", or "unknown" outside a repository."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return "unknown" if out is None else str(bool(out.strip())).lower()


def file_hash(path: Path) -> str:
    """Short sha256 of a file (e.g. dvc.lock), or 'none' when it does not exist."""
    if not path.is_file():
        return "none"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def provenance_tags(params: Mapping[str, Any]) -> dict[str, str]:
    """What ties a run to the exact code, configuration and data versions."""
    tags = {
        "medtailor_version": __version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "params_hash": params_hash(dict(params)),
        "dvc_lock_hash": file_hash(Path("dvc.lock")),
    }
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return tags


def tracking_uri(tracking: Mapping[str, Any]) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or str(tracking["uri"])


def _experiment_id(mlflow: Any, tracking: Mapping[str, Any], uri: str) -> str:
    name = str(tracking["experiment"])
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = Path(tracking["artifact_root"]).resolve().as_uri() if local else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another stage process created it first
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def study_run_id(study: str) -> str | None:
    """The run of ``study`` opened with this pipeline invocation, if any."""
    return os.environ.get(STUDY_RUN_ENV.format(study.upper())) or None


class Terminated(BaseException):
    """The process received SIGTERM: what Slurm sends at a job's time limit and on
    ``scancel``, and Snakemake to a job it cancels. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` (so runs can be closed as KILLED);
    the previous handler comes back after it. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def end_active_runs(status: str) -> None:
    """End every open MLflow run of this process, innermost first (a search candidate's
    child run, then the stage run)."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run(status)


@contextmanager
def stage_run(
    stage: str, params: Mapping[str, Any], study: str | None = None, analysis: bool = False
) -> Iterator[Any]:
    """Open an MLflow run for one execution of ``stage``, logging the params it reads (its
    view of params.yaml, see ``medtailor.config.stage_keys``) and the provenance tags.

    A configuration of ``study`` opens its run as a child of the study's run; the study's
    ``analysis`` logs into the study's run itself (both when the pipeline opened one)."""
    import mlflow

    uri = tracking_uri(params["tracking"])
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(mlflow, params["tracking"], uri)
    tags = {"medtailor.stage": stage, **provenance_tags(params)}
    own_study_run = study_run_id(study) if study else None
    if own_study_run and analysis:
        opened = mlflow.start_run(run_id=own_study_run)
        mlflow.set_tags(tags)
    else:
        parent = own_study_run or os.environ.get(PARENT_RUN_ENV) or dvc_parent_run(params)
        opened = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=stage,
            parent_run_id=parent or None,
            tags=tags,
        )
    with sigterm_raises(), opened as run:
        mlflow.log_params(flatten({k: v for k, v in params.items() if k != "tracking"}))
        log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, uri)
        dvc_parent = None if own_study_run else _DVC_PARENT.get("run_id")
        try:
            yield run
        except Terminated:
            # Otherwise the run would stay RUNNING forever (or end FAILED, which it did not).
            log.error("%s: terminated (SIGTERM); MLflow run %s ends KILLED", stage, run.info.run_id)
            end_active_runs("KILLED")
            _end_dvc_parent(dvc_parent, "FAILED")
            raise
        except BaseException:
            _end_dvc_parent(dvc_parent, "FAILED")
            raise
        _end_dvc_parent(dvc_parent, "FINISHED")


# The parent run of the `dvc repro` this stage runs under (when it runs under one).
_DVC_PARENT: dict[str, str] = {}
DVC_INVOCATION_TAG = "medtailor.dvc_invocation"


def dvc_invocation() -> str | None:
    """An id of the `dvc repro` (or `dvc exp run`) process this stage runs under: DVC sets
    DVC_STAGE for every stage command, and the dvc process is an ancestor; its pid and
    start time (from /proc) name it. None outside DVC or where /proc is missing."""
    if not os.environ.get("DVC_STAGE"):
        return None
    pid = os.getppid()
    for _ in range(8):  # dvc -> sh -c -> medtailor, with room for wrappers
        proc = Path(f"/proc/{pid}")
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text()
        except OSError:
            return None
        if any(Path(part.decode(errors="replace")).name == "dvc" for part in command[:2]):
            start = stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in ticks
            return f"{pid}:{start}"
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
        if pid <= 1:
            return None
    return None


def dvc_parent_run(params: Mapping[str, Any]) -> str | None:
    """The parent run of this `dvc repro`, shared by its stages: the first stage opens it
    (run name ``pipeline``, tagged with the invocation), later ones find it by its tag and
    mark it RUNNING again; each stage marks it FINISHED when it ends well and FAILED when
    it fails, so after the last stage it ends as the invocation did."""
    invocation = dvc_invocation()
    if invocation is None:
        return None
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(params["tracking"])
    client = MlflowClient(uri)
    import mlflow

    experiment_id = _experiment_id(mlflow, params["tracking"], uri)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{DVC_INVOCATION_TAG}` = '{invocation}'"
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(
            experiment_id,
            run_name="pipeline",
            tags={
                "medtailor.stage": "pipeline",
                "medtailor.driver": "dvc repro",
                DVC_INVOCATION_TAG: invocation,
                **provenance_tags(params),
            },
        ).info.run_id
    _DVC_PARENT["run_id"] = run_id
    return run_id


def _end_dvc_parent(run_id: str | None, status: str) -> None:
    if run_id is None:
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    MlflowClient(mlflow.get_tracking_uri()).set_terminated(run_id, status=status)


def log_step_metrics(metrics: Mapping[str, float], step: int) -> None:
    """The metric sink of every training loop: per-epoch metrics onto the active MLflow
    run (the stage's, or a candidate's child run); nothing outside a run."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics(dict(metrics), step=step)


def child_run(name: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
    """A nested MLflow run of the current stage run (a search candidate), or a null context
    outside one; yields the run or None."""
    import mlflow

    if mlflow.active_run() is None:
        return nullcontext()
    run = mlflow.start_run(run_name=name, nested=True)
    mlflow.set_tags({k: str(v) for k, v in tags.items()})
    mlflow.log_params(dict(params))
    return run


_OWN_PARENT: list[str] = []
_OWN_STUDIES: list[str] = []


def start_pipeline_run(params: Mapping[str, Any]) -> str:
    """Open the parent run of one pipeline invocation and export its id to every job.

    Jobs (local processes or Slurm jobs, which inherit the environment) then open their
    stage runs as its children. A process that finds the id already set (a job's own
    Snakemake) reuses it instead of opening another parent.
    """
    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV]
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(params["tracking"])
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(mlflow, params["tracking"], uri)
    run = MlflowClient(uri).create_run(
        experiment_id,
        run_name="pipeline",
        tags={"medtailor.stage": "pipeline", **provenance_tags(params)},
    )
    os.environ[PARENT_RUN_ENV] = run.info.run_id
    _OWN_PARENT.append(run.info.run_id)
    client = MlflowClient(uri)
    for study, cfg in (params.get("studies") or {}).items():
        if cfg.get("enabled"):
            child = client.create_run(
                experiment_id,
                run_name=f"study:{study}",
                tags={
                    "medtailor.stage": "study",
                    "medtailor.study": study,
                    "mlflow.parentRunId": run.info.run_id,
                    **provenance_tags(params),
                },
            )
            os.environ[STUDY_RUN_ENV.format(study.upper())] = child.info.run_id
            _OWN_STUDIES.append(child.info.run_id)
    log.info("MLflow parent run %s for this pipeline invocation", run.info.run_id)
    return run.info.run_id


def end_pipeline_run(params: Mapping[str, Any], status: str) -> None:
    """Close the parent run opened by this process (FINISHED or FAILED)."""
    if not _OWN_PARENT:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(params["tracking"]))
    while _OWN_STUDIES:  # a study whose analysis did not run this time (nothing changed)
        run_id = _OWN_STUDIES.pop()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status=status)
    client.set_terminated(_OWN_PARENT.pop(), status=status)
