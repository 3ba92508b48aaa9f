"""Each stage sees only the params keys it declares, the ones Snakemake and DVC rerun on."""

from __future__ import annotations

import pytest

from medtailor.config.stage_keys import (
    STAGE_KEYS,
    UndeclaredParamError,
    stage_keys,
    stage_values,
    stage_view,
    undeclared_key_error,
)


def test_detect_sees_its_inference_keys_and_nothing_of_the_training(repo_params):
    view = stage_view(repo_params, "detect")
    assert set(view) == {"detector", "tracking"}
    assert set(view["detector"]) == {
        "source",
        "external_boxes",
        "min_candidate_score",
        "nms_iou",
        "max_candidates_per_image",
        "sliding_window_overlap",
    }
    with pytest.raises(KeyError):
        view["detector"]["radiograph"]  # the architecture comes from the checkpoint


def test_train_sees_its_own_configuration_only(repo_params):
    view = stage_view(repo_params, "train", "lite0_scratch")
    assert set(view["models"]) == {"lite0_scratch"}
    assert view["compute"] == {"gpus": repo_params["compute"]["gpus"]}
    assert stage_keys("train", "lite0_scratch")[2] == "models.lite0_scratch"
    values = stage_values(repo_params, "train", "lite0_scratch")
    assert values["models.lite0_scratch"] == repo_params["models"]["lite0_scratch"]
    # A train job always names its configuration.
    with pytest.raises(ValueError, match="name it"):
        stage_view(repo_params, "train")


def test_every_declared_key_exists_in_the_shipped_params(repo_params):
    # An external-validation project's params: the shipped ones with its record.
    record = {"project": "trained", "commit": "", "params_hash": "", "models": ["lite0_imagenet"]}
    external = {**repo_params, "external": record}
    for stage in STAGE_KEYS:
        params = external if stage.endswith("_external") else repo_params
        section = {"train": "models", "train_seg": "seg_models"}.get(stage)
        model = next(iter(params[section])) if section else None
        study = next(iter(params["studies"])) if stage.startswith("study") else None
        values = stage_values(params, stage, model, study)  # KeyError on a stale key
        # A frozen model scoring patches reads no key: its bundle holds what it needs.
        assert values or stage == "score", stage


def test_an_undeclared_read_is_named_as_such(repo_params):
    view = stage_view(repo_params, "detect")
    try:
        view["patches"]
    except KeyError as exc:
        error = undeclared_key_error("detect", exc, repo_params)
    assert isinstance(error, UndeclaredParamError)
    assert "'patches'" in str(error) and "STAGE_KEYS" in str(error)
    # A KeyError about something that is no params key stays what it is.
    other = KeyError("no_such_column")
    assert undeclared_key_error("detect", other, repo_params) is other
