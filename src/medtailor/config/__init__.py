"""params.yaml: loading and validation against the one schema shared with Snakemake."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from medtailor.config.stage_keys import lookup

SCHEMA_FILE = "params.schema.yaml"


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or does not match the schema."""


def schema_path() -> Path:
    return Path(str(resources.files(__package__).joinpath(SCHEMA_FILE)))


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(schema_path().read_text())


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key(s) {extra}; allowed keys are {allowed}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"


# Pairs (low, high) whose values must satisfy low <= high: relations JSON schema cannot state.
ORDERED_KEYS = [
    ("patches.negative_iou", "patches.positive_iou"),
    ("evaluate.froc.false_positive_iou", "evaluate.froc.hit_iou"),
]


def runs_classification(params: dict[str, Any]) -> bool:
    """The project trains classifiers (a ``patches`` block: detector candidates or whole
    images)."""
    return "patches" in params


def runs_detector(params: dict[str, Any]) -> bool:
    """Classifiers of detector candidates: the detector stages run (or read the user's boxes)."""
    return runs_classification(params) and params["patches"]["source"] == "candidates"


def cross_validates_detector(params: dict[str, Any]) -> bool:
    """The built-in detector's patient-level cross-validation runs (a trained project)."""
    detector = params.get("detector", {})
    return (
        runs_detector(params)
        and not is_external(params)
        and detector.get("source") == "builtin"
        and int(detector.get("cross_validation_folds", 0)) > 0
    )


# Where an external-validation project keeps the frozen models' bundles (one folder each).
EXTERNAL_BUNDLES = "trained"


def is_external(params: dict[str, Any]) -> bool:
    """An external-validation project: frozen models score a new cohort, nothing trains."""
    return "external" in params


def runs_segmentation(params: dict[str, Any]) -> bool:
    """The project trains 3D segmentation networks (a ``train_seg`` block)."""
    return "train_seg" in params


def enabled(params: dict[str, Any], block: str) -> bool:
    """An optional block with an ``enabled`` switch is present and switched on."""
    return bool(params.get(block, {}).get("enabled"))


# evaluate's keys for classifiers (a project that segments only needs none of them).
CLASSIFIER_EVALUATE_KEYS = ("operating_point", "gradcam_per_outcome", "cam_method", "evidence")
# The synthetic demo set: a project reading it needs the synth block that makes it.
SYNTH_INPUT = "data/synth"


def task_errors(params: dict[str, Any]) -> list[str]:
    """Blocks a project's tasks need beyond what the schema can say."""
    errors = []
    if not runs_classification(params) and not runs_segmentation(params):
        errors.append(
            "params.yaml runs no task: add the patches, train and models blocks (classification) "
            "or train_seg and seg_models (3D segmentation); medtailor init --task writes them"
        )
    if runs_classification(params):
        missing = [key for key in CLASSIFIER_EVALUATE_KEYS if key not in params["evaluate"]]
        if missing:
            errors.append(f"evaluate: the classifiers' evaluation needs {missing} (see the schema)")
    if runs_detector(params):
        for block, why in (
            ("detector", "the detector finds the candidates"),
            ("froc", "evaluate.froc scores the candidates"),
        ):
            present = block in params or block in params["evaluate"]
            if not present:
                errors.append(
                    f"patches.source is candidates but params.yaml has no {block} block ({why}); "
                    "for one sample per image set patches.source: whole_image"
                )
    if params["ingest"]["input"] == SYNTH_INPUT and "synth" not in params:
        errors.append(
            f"ingest.input is {SYNTH_INPUT} (the synthetic demo set) but params.yaml has no synth "
            "block to make it: set ingest.input to your data folder"
        )
    return errors


def cross_field_errors(params: dict[str, Any]) -> list[str]:
    """Relations between keys, checked after the schema so every key exists and has its type."""
    errors = task_errors(params)
    if errors:
        return errors
    for low, high in ORDERED_KEYS:
        try:
            low_value, high_value = lookup(params, low), lookup(params, high)
        except KeyError:  # a block the project's task does not have
            continue
        if low_value > high_value:
            errors.append(f"{low} ({low_value}) must not exceed {high} ({high_value})")
    fractions = params["split"]["fractions"]
    if abs(sum(fractions) - 1.0) > 1e-6:
        errors.append(f"split.fractions {fractions} must sum to 1 (they sum to {sum(fractions):g})")
    detector = params.get("detector", {})
    for kind in ("radiograph", "volume"):
        for key, bounds in detector.get(kind, {}).get("augment", {}).items():
            if key.endswith("_range") and bounds[0] > bounds[1]:
                errors.append(f"detector.{kind}.augment.{key} {bounds}: low exceeds high")
    backbone = detector.get("volume", {}).get("backbone", "resnet")
    if backbone != "resnet":
        errors.append(
            f"detector.volume.backbone ({backbone}) must be resnet: timm backbones are 2D and "
            "no 3D ImageNet weights exist"
        )
    segmentation = {"train_seg": {}, **params["seg_models"]} if runs_segmentation(params) else {}
    for name, entry in segmentation.items():
        recipe = {**params["train_seg"], **entry.get("recipe", {})}
        where = "train_seg" if name == "train_seg" else f"seg_models.{name}.recipe"
        if len(recipe["crop_class_ratios"]) != len(recipe["labels"]) + 1:
            errors.append(
                f"{where}: crop_class_ratios has {len(recipe['crop_class_ratios'])} values; it "
                f"needs one per class, background first ({len(recipe['labels']) + 1})"
            )
    for check in registered_checks():
        errors += check(params)
    return errors


ParamsCheck = Callable[[dict[str, Any]], list[str]]
_CHECKS: dict[str, ParamsCheck] = {}
# A stage package contributes checks of its own keys in a module of this name, whose
# functions register with ``@params_check``; config imports no stage by name.
CHECKS_MODULE = "params_checks"


def params_check(check: ParamsCheck) -> ParamsCheck:
    """Register ``check`` (params -> list of error lines) with the params validation."""
    _CHECKS[f"{check.__module__}.{check.__qualname__}"] = check
    return check


def registered_checks() -> list[ParamsCheck]:
    """Every stage's registered checks, importing each stage's ``params_checks`` module."""
    import importlib

    package = Path(__file__).resolve().parent.parent
    for stage in sorted(package.iterdir()):
        if (stage / f"{CHECKS_MODULE}.py").is_file():
            importlib.import_module(f"medtailor.{stage.name}.{CHECKS_MODULE}")
    return list(_CHECKS.values())


def validate_params(params: dict[str, Any], source: str = "params.yaml") -> None:
    """Raise ParamsError listing every schema violation and broken relation between keys,
    each with its key path, before any work starts."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    lines = [_describe(e) for e in errors] if errors else cross_field_errors(params)
    if lines:
        listed = "\n".join(f"  - {line}" for line in lines)
        raise ParamsError(f"{source} does not match the medtailor schema:\n{listed}")


def named_entry(params: dict[str, Any], section: str, recipe: str, name: str) -> dict[str, Any]:
    """Configuration ``name`` of ``params[section]`` (models, seg_models) resolved: the
    ``params[recipe]`` defaults, the entry's ``recipe`` overrides, then its own keys."""
    if name not in params[section]:
        raise ValueError(
            f"no {section} configuration {name!r}; params.yaml defines {sorted(params[section])}"
        )
    entry = copy.deepcopy(params[section][name])
    defaults = {**copy.deepcopy(params[recipe]), **entry.pop("recipe", {})}
    return {**defaults, **entry}


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(
            f"{path}: no such params file (run from the project root or pass --params)"
        )
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    validate_params(params, str(path))
    return params


def params_hash(params: dict[str, Any]) -> str:
    """Stable short hash of a params mapping (tagged on every MLflow run)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
