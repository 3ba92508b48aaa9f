"""Which params keys each stage reads: the one list behind Snakemake's rerun triggers,
DVC's ``params`` and the view of params.yaml each ``medtailor <stage>`` command gets.

A stage only sees the keys listed here (plus ``tracking``, which says where runs are
logged, not what they compute), so a key its code reads but this table omits fails loudly
instead of silently escaping the rerun triggers. ``{model}`` stands for the configuration
a ``train`` or ``train_seg`` job trains.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

SEARCH_KEYS = ("seed", "train", "search", "evaluate.froc")
SEARCH_SEG_KEYS = ("seed", "train_seg", "search_seg")
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "synth": ("seed", "synth"),
    "ingest": ("ingest",),
    "resample": ("resample",),
    "split": ("split",),
    # An external cohort: every patient is tested (external.models marks the project).
    "split_external": ("split", "external.models"),
    # Architecture and training of the detectors; its checkpoint choice counts lesions found
    # by a candidate scoring above patches.min_score with IoU above patches.positive_iou.
    "train_detector": (
        "seed",
        "detector.source",
        "detector.radiograph",
        "detector.volume",
        "detector.train_folds",
        "patches.min_score",
        "patches.positive_iou",
        "split.key",
    ),
    # Each fold's detectors train as train_detector's (its folds dealt by split.key).
    "detector_cv_fold": (
        "seed",
        "detector",
        "patches.min_score",
        "patches.positive_iou",
        "split.key",
    ),
    # The out-of-fold candidates judged as evaluate judges the detector.
    "detector_cv": (
        "seed",
        "detector.cross_validation_folds",
        "detector.max_candidates_per_image",
        "patches.min_score",
        "split.key",
        "evaluate.froc",
        "evaluate.bootstrap_replicates",
        "evaluate.confidence_level",
    ),
    # Inference only: the architecture, patch size and intensity come with each checkpoint.
    "detect": (
        "detector.source",
        "detector.external_boxes",
        "detector.min_candidate_score",
        "detector.nms_iou",
        "detector.max_candidates_per_image",
        "detector.sliding_window_overlap",
    ),
    "patches": ("patches", "detector.radiograph.intensity", "detector.volume.intensity"),
    # Whole images are scaled by patches.intensity (no detector).
    "patches_whole_image": ("patches",),
    "train": ("seed", "train", "models.{model}", "compute.gpus"),
    "train_seg": ("seed", "train_seg", "seg_models.{model}"),
    # Candidates train with the train recipe under search's overrides and are scored by
    # validation AUFROC as evaluate computes it.
    "search": SEARCH_KEYS,
    "search_ask": SEARCH_KEYS,
    "search_candidate": SEARCH_KEYS,
    "search_tell": SEARCH_KEYS,
    "search_summary": SEARCH_KEYS,
    "search_final": SEARCH_KEYS,
    "search_winner_scratch": SEARCH_KEYS,
    # Candidates, supernet and final network train with the train_seg recipe under
    # search_seg's overrides.
    "search_seg": SEARCH_SEG_KEYS,
    "search_seg_ask": SEARCH_SEG_KEYS,
    "search_seg_candidate": SEARCH_SEG_KEYS,
    "search_seg_tell": SEARCH_SEG_KEYS,
    "search_seg_fine": SEARCH_SEG_KEYS,
    "search_seg_final": SEARCH_SEG_KEYS,
    # patches.positive_iou: the evidence table's detector recall, as the patches stage counts it.
    # patches.context and square place each lesion box in its patch (the pointing game).
    "evaluate": (
        "seed",
        "evaluate",
        "patches.positive_iou",
        "patches.min_score",
        "patches.context",
        "patches.square",
    ),
    # Whole-image samples (patches.source: whole_image): no detector, no boxes, no FROC.
    "evaluate_whole_image": (
        "seed",
        "evaluate.bootstrap_replicates",
        "evaluate.confidence_level",
        "evaluate.operating_point",
        "evaluate.evidence",
        "evaluate.cam_method",
        "evaluate.gradcam_per_outcome",
    ),
    # An external cohort scored by frozen models: the thresholds come with the models; the
    # report names the cohort (ingest.input).
    "evaluate_external": (
        "seed",
        "evaluate",
        "patches.positive_iou",
        "patches.min_score",
        "external",
        "ingest.input",
    ),
    # A frozen model scores the patch store: everything it needs is in its bundle.
    "score": (),
    # 3D segmentation alone: the Dice statistics.
    "evaluate_segmentation": ("seed", "evaluate.bootstrap_replicates", "evaluate.confidence_level"),
    # A study's configurations train with the train recipe under the study's block (Snakemake
    # compares each configuration's expanded entry instead: medtailor.study).
    "study_train": ("seed", "train", "studies.{study}", "compute.gpus"),
    "study": ("seed", "train", "evaluate", "studies.{study}"),
}
ALWAYS_VISIBLE = ("tracking",)


class UndeclaredParamError(KeyError):
    """A stage read a params key that STAGE_KEYS does not list for it."""

    def __str__(self) -> str:
        return str(self.args[0])


def undeclared_key_error(stage: str, error: KeyError, params: Mapping[str, Any]) -> KeyError:
    """``error`` restated when the missing key exists in params.yaml but not in the stage's
    view (a stage reading a key it does not declare); else ``error`` itself."""
    key = error.args[0] if error.args else None
    if not isinstance(key, str) or not any(key in keys for keys in _all_keys(params)):
        return error
    return UndeclaredParamError(
        f"KeyError '{key}': '{key}' is a params.yaml key, so medtailor {stage} probably read "
        "a key that medtailor.config.stage_keys.STAGE_KEYS does not list for it (a change "
        "to it would not rerun the stage): declare it there"
    )


def _all_keys(params: Mapping[str, Any]) -> list[set[str]]:
    found: list[set[str]] = [set(params)]
    for value in params.values():
        if isinstance(value, Mapping):
            found += _all_keys(value)
    return found


def task_stage(stage: str, params: Mapping[str, Any] | None) -> str:
    """The entry of STAGE_KEYS for ``stage`` in a project with ``params``: the keys follow
    the task (evaluate of whole-image samples reads no detector or FROC key)."""
    stage = stage.replace("-", "_")
    if params is not None and "external" in params and stage in ("split", "evaluate"):
        return f"{stage}_external"
    whole_image = params is not None and params.get("patches", {}).get("source") == "whole_image"
    if whole_image and stage in ("evaluate", "patches"):
        return f"{stage}_whole_image"
    if stage == "evaluate" and params is not None and "patches" not in params:
        return "evaluate_segmentation"
    return stage


def stage_keys(
    stage: str,
    model: str | None = None,
    study: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[str]:
    """The dotted keys ``stage`` reads (``models.{model}`` filled in when ``model`` is
    given, ``studies.{study}`` when ``study`` is) in a project with ``params`` (when given:
    some stages' keys follow the task)."""
    stage = task_stage(stage, params)
    keys = STAGE_KEYS[stage]
    keys = [key.replace("{model}", model) if model else key for key in keys]
    return [key.replace("{study}", study) if study else key for key in keys]


def lookup(params: Mapping[str, Any], key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        value = value[part]
    return value


def _read_keys(
    stage: str, model: str | None, study: str | None, params: Mapping[str, Any]
) -> list[str]:
    keys = stage_keys(stage, model, study, params)
    if any("{model}" in key for key in keys):
        raise ValueError(f"medtailor {stage} reads one model configuration: name it")
    if any("{study}" in key for key in keys):
        raise ValueError(f"medtailor {stage} reads one study: name it")
    return keys


def stage_values(
    params: Mapping[str, Any], stage: str, model: str | None = None, study: str | None = None
) -> dict:
    """``{dotted key: value}`` of the keys ``stage`` reads: what Snakemake compares to decide
    whether params changed."""
    return {
        key: copy.deepcopy(lookup(params, key)) for key in _read_keys(stage, model, study, params)
    }


def stage_view(
    params: Mapping[str, Any], stage: str, model: str | None = None, study: str | None = None
) -> dict:
    """The part of ``params`` that ``stage`` may read, nested as in params.yaml (plain
    dicts: it is saved in checkpoints)."""
    keys = _read_keys(stage, model, study, params) + list(ALWAYS_VISIBLE)
    view: dict[str, Any] = {}
    for key in keys:
        *parents, last = key.split(".")
        node = view
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(lookup(params, key))
    return view
