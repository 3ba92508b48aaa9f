"""``medtailor study-train`` and ``medtailor study``: studies as compact params blocks.

A study (``studies.<name>`` in params.yaml) describes many model configurations at once
(a list of architectures x initialisations x truncations, a grid of factors); the study
registry (``registry``) expands the description into named configurations, each a full
``train`` entry. Every configuration is one ``study-train`` job (the ``train`` loop,
resumable, one Slurm job on a cluster), written to ``data/studies/<study>/models/<name>``;
``study`` then analyses them all into ``data/studies/<study>/report``. Snakemake reruns a
configuration only when its own expanded entry changes (its ``reads`` param is that entry).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from medtailor.study.registry import STUDIES, StudyRun, study_expander


def study_configurations(params: dict[str, Any], study: str) -> dict[str, dict[str, Any]]:
    """Name -> resolved model configuration of every configuration of ``study``: the
    ``train`` recipe, the study's ``recipe``, its shared ``entry`` keys, then what the
    expansion sets (architecture, initialisation, ...)."""
    cfg = params["studies"][study]
    expanded = study_expander(study)(cfg)
    base = {**copy.deepcopy(params["train"]), **copy.deepcopy(cfg.get("recipe", {}))}
    return {
        name: {**base, **copy.deepcopy(cfg.get("entry", {})), **varied}
        for name, varied in expanded.items()
    }


class StudyWeightsMissing(RuntimeError):
    """Configurations of a study cannot start for want of pre-trained weights."""


def missing_configurations(params: dict[str, Any], study: str) -> dict[str, str]:
    """Configuration -> what to provide, for those whose initial weights are not here."""
    from medtailor.train.weights import missing_weights

    found = {}
    for name, entry in study_configurations(params, study).items():
        what = missing_weights(entry["model"], entry["init"])
        if what:
            found[name] = what
    return found


def runnable_configurations(params: dict[str, Any], study: str) -> list[str]:
    """The configurations to train: all of them, or with ``allow_missing_weights`` those
    whose weights are here. Raises, naming every file to provide, before anything runs."""
    missing = missing_configurations(params, study)
    if missing and not params["studies"][study].get("allow_missing_weights", False):
        listed = "; ".join(f"{name} needs {what}" for name, what in missing.items())
        raise StudyWeightsMissing(
            f"study {study!r}: {len(missing)} configuration(s) cannot start: {listed}. Provide "
            f"them, or set studies.{study}.allow_missing_weights: true to run the others "
            "(the report marks the missing rows)"
        )
    return [name for name in study_configurations(params, study) if name not in missing]


def enabled_studies(params: dict[str, Any]) -> list[str]:
    return [name for name, cfg in params.get("studies", {}).items() if cfg.get("enabled")]


def configuration_values(params: dict[str, Any], study: str, name: str) -> dict[str, Any]:
    """What one study configuration's training reads: the key Snakemake compares to rerun
    exactly the configurations whose expanded entry changed."""
    return {
        "seed": params["seed"],
        "entry": study_configurations(params, study)[name],
        "compute.gpus": params["compute"]["gpus"],
    }


def configuration_label(params: dict[str, Any], study: str, name: str) -> str:
    """What configuration ``name`` varies, readable (``init=scratch,learning_rate=0.005``):
    its folder name stays short and stable, the MLflow UI shows this."""
    varied = study_expander(study)(params["studies"][study])[name]

    def readable(value: Any) -> str:
        if isinstance(value, dict):  # a head: its type and options
            return ";".join(f"{k}:{v}" for k, v in value.items())
        return str(value)

    return ",".join(f"{key}={readable(value)}" for key, value in varied.items())


def study_entry(params: dict[str, Any], study: str, name: str) -> dict[str, Any]:
    configurations = study_configurations(params, study)
    if name not in configurations:
        raise ValueError(
            f"study {study!r} has no configuration {name!r}; it expands to {sorted(configurations)}"
        )
    return configurations[name]


def run_study_train(
    study: str,
    name: str,
    store_dir: Path,
    out_dir: Path,
    state_dir: Path,
    params: dict[str, Any],
    sink: Any = None,
) -> dict[str, Any]:
    """Train configuration ``name`` of ``study`` with the ``train`` loop."""
    from medtailor.train.loop import train_model

    entry = study_entry(params, study, name)
    return train_model(name, entry, store_dir, out_dir, state_dir, int(params["seed"]), sink)


def run_study(
    study: str, models_dir: Path, store_dir: Path, out_dir: Path, params: dict[str, Any]
) -> dict[str, Any]:
    """The study's analysis of its trained configurations (``STUDIES[study].analyse``);
    configurations left out for want of weights (``allow_missing_weights``) are rows marked
    with what they need."""
    names = runnable_configurations(params, study)
    untrained = [n for n in names if not (models_dir / n / "best.pt").is_file()]
    if untrained:
        raise FileNotFoundError(
            f"{models_dir}: configurations {untrained} of study {study!r} are not trained "
            f"(run: snakemake study_{study})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = {n: models_dir / n for n in names}
    missing = missing_configurations(params, study)
    configurations = study_configurations(params, study)
    left_out = {name: {**configurations[name], "missing": what} for name, what in missing.items()}
    return STUDIES[study].analyse(StudyRun(folders, store_dir, out_dir, params, left_out))


__all__ = [
    "STUDIES",
    "configuration_values",
    "enabled_studies",
    "runnable_configurations",
    "study_configurations",
]
