from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medtailor.config import ParamsError, load_params, params_hash, validate_params

from .conftest import REPO, set_param


def test_repo_params_validate():
    params = load_params(REPO / "params.yaml")
    assert params["resample"]["spacing_mm"] == [1.0, 1.0, 1.0]


def test_unknown_key_is_named(params):
    params["resample"]["ordr"] = 3
    with pytest.raises(ParamsError, match=r"resample: unknown key\(s\) \['ordr'\]"):
        validate_params(params)


def test_wrong_type_and_range_are_named_with_their_path(params):
    params["resample"]["order"] = "three"
    params["synth"]["volume"]["spacing_mm"] = [0.7, 0.7]
    with pytest.raises(ParamsError) as info:
        validate_params(params)
    message = str(info.value)
    assert "resample.order: 'three' is not of type 'integer'" in message
    assert "synth.volume.spacing_mm" in message


def test_missing_section_is_reported(params):
    del params["ingest"]
    with pytest.raises(ParamsError, match="'ingest' is a required property"):
        validate_params(params)


def test_a_task_missing_a_block_it_needs_is_named(params):
    """A project holds its task's blocks only; one its task needs cannot be left out."""
    candidates = {**params}
    del candidates["detector"]
    with pytest.raises(ParamsError, match=r"patches\.source is candidates but .* no detector"):
        validate_params(candidates)
    whole_image = {**params, "patches": {**params["patches"], "source": "whole_image"}}
    with pytest.raises(ParamsError, match="patches: 'intensity' is a required property"):
        validate_params(whole_image)
    segmentation_only = {k: v for k, v in params.items() if k not in ("patches", "train")}
    with pytest.raises(ParamsError, match="'patches' is a dependency of 'models'"):
        validate_params(segmentation_only)
    nothing = {
        k: v
        for k, v in params.items()
        if k not in ("patches", "train", "models", "search", "studies", "detector", "train_seg",
                     "seg_models", "search_seg")
    }  # fmt: skip
    with pytest.raises(ParamsError, match=r"params\.yaml runs no task"):
        validate_params(nothing)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (
            "patches",
            "negative_iou",
            0.6,
            r"patches.negative_iou \(0.6\) must not exceed patches.positive_iou \(0.5\)",
        ),
        (
            ("evaluate", "froc"),
            "false_positive_iou",
            0.7,
            r"evaluate.froc.false_positive_iou \(0.7\) must not exceed evaluate.froc.hit_iou",
        ),
        ("split", "fractions", [0.6, 0.3, 0.2], r"split.fractions .* must sum to 1"),
        ("split", "fractions", [0.8, 0.2, 0.0], r"split.fractions.2: 0.0 is less than or equal"),
    ],
)
def test_relations_between_keys_are_checked_before_any_work(params, section, key, value, message):
    holder = params
    for part in (section,) if isinstance(section, str) else section:
        holder = holder[part]
    holder[key] = value
    with pytest.raises(ParamsError, match=message):
        validate_params(params)


def test_a_segmentation_search_patch_it_cannot_halve_or_a_clashing_name_is_refused(params):
    params["search_seg"]["supernet_recipe"]["patch_size"] = [48, 48, 40]
    params["seg_models"]["c2fnas_searched"] = {"model": "dynunet"}
    with pytest.raises(ParamsError) as error:
        validate_params(params)
    assert "search_seg.supernet_recipe: patch_size [48, 48, 40]" in str(error.value)
    assert "multiple of 16" in str(error.value)
    assert "seg_models.c2fnas_searched: the segmentation search trains" in str(error.value)


def test_snakemake_refuses_crossed_thresholds_before_any_job(project):
    set_param(project, "patches", "negative_iou", 0.9)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "patches.negative_iou (0.9) must not exceed patches.positive_iou" in (
        result.stdout + result.stderr
    )


def test_params_hash_is_stable_and_sensitive(params):
    first = params_hash(params)
    assert first == params_hash(yaml.safe_load(yaml.safe_dump(params)))
    params["seed"] += 1
    assert params_hash(params) != first


def test_cli_rejects_bad_params_with_exit_2(tmp_path: Path, params):
    params["resample"]["label_mode"] = "cubic"
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "medtailor.cli", "resample", "--params", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "resample.label_mode: 'cubic' is not one of" in result.stderr


@pytest.mark.parametrize("stage", ["synth", "ingest", "resample", "status"])
def test_cli_help_describes_each_stage(stage):
    result = subprocess.run(
        [sys.executable, "-m", "medtailor.cli", stage, "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "--params" in result.stdout
