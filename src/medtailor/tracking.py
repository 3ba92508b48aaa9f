"""MLflow wiring shared by every stage: one run per stage execution.

The store defaults to a local ``sqlite:///mlflow.db`` with artefacts beside it;
``MLFLOW_TRACKING_URI`` overrides params. A pipeline driver may export
``MEDTAILOR_PARENT_RUN_ID`` so each stage run becomes its child. Only pseudonymous
IDs, counts and params are ever logged.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medtailor.config import params_hash

PARENT_RUN_ENV = "MEDTAILOR_PARENT_RUN_ID"
log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


@contextmanager
def stage_run(
    stage: str, params: Mapping[str, Any], sections: tuple[str, ...] | None = None
) -> Iterator[Any]:
    """Open an MLflow run for one execution of ``stage``, logging the params ``sections``
    it reads (default: the section named like the stage) and the provenance tags."""
    import mlflow

    uri = tracking_uri(params["tracking"])
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(mlflow, params["tracking"], uri)
    tags = {
        "medtailor.stage": stage,
        "git_commit": git_commit(),
        "params_hash": params_hash(dict(params)),
    }
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=stage,
        parent_run_id=os.environ.get(PARENT_RUN_ENV) or None,
        tags=tags,
    ) as run:
        stage_params: dict[str, Any] = {"seed": params["seed"]}
        for section in sections or (stage,):
            stage_params.update(flatten(params.get(section, {}), f"{section}."))
        mlflow.log_params(stage_params)
        log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, uri)
        yield run
