"""The detector's patient-level cross-validation (``medtailor cross-validate-detector``):
folds, the recall it reports, and a run on the small synthetic set where no image is
scored by a detector that saw its patient."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from medtailor.detector_cv import (
    cross_validation_folds,
    fold_roles,
    recall_summary,
    run_detector_cv,
    run_detector_cv_fold,
    top_candidate_hits,
)

from .conftest import BIN, run, small

BOOT = {"replicates": 200, "level": 0.95, "seed": 0}


def test_folds_are_balanced_keyed_and_stable():
    patients = [f"p{i:03d}" for i in range(23)]
    folds = cross_validation_folds(patients, 5, "key-a")
    sizes = np.bincount(list(folds.values()), minlength=5)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 23
    assert cross_validation_folds(list(reversed(patients)), 5, "key-a") == folds
    assert cross_validation_folds(patients, 5, "key-b") != folds


@pytest.mark.parametrize(("folds", "patients"), [(2, 10), (5, 4)])
def test_too_few_folds_or_patients_are_refused(folds, patients):
    with pytest.raises(ValueError, match="cross_validation_folds"):
        cross_validation_folds([f"p{i}" for i in range(patients)], folds, "k")


def test_the_checkpoint_is_chosen_on_another_fold_than_the_scored_one():
    for fold in range(5):
        scored, chooser = fold_roles(fold, 5)
        assert scored == fold and chooser != scored


def _ranked(image: str, hit_rank: int | None, count: int) -> list[dict]:
    """``count`` candidates of one image, the one ranked ``hit_rank`` hitting its lesion."""
    return [
        {
            "image_id": image,
            "score": float(100 - rank),
            "hits": [f"{image}-l"] if rank == hit_rank else [],
        }
        for rank in range(1, count + 1)
    ]


def test_recall_at_k_counts_lesions_hit_by_an_images_best_k_candidates():
    candidates = pd.DataFrame(
        _ranked("a", 1, 100)
        + _ranked("b", 15, 100)
        + _ranked("c", None, 100)
        + _ranked("d", 50, 60)
    )
    lesions = pd.DataFrame({"lesion_id": ["a-l", "b-l", "c-l", "d-l"]})
    summary = recall_summary(candidates, lesions, np.array(["a", "b", "c", "d"]), 70.0, BOOT)
    assert summary["recall_at_1"] == 0.25
    assert summary["recall_at_10"] == 0.25
    assert summary["recall_at_20"] == 0.5
    assert summary["recall_at_100"] == 0.75
    # Score above 70: ranks 1-29 of each image; b's hit (rank 15) and a's are kept.
    assert summary["kept_recall"] == 0.5
    low, high = summary["recall_at_100_ci"]
    assert 0 <= low <= 0.75 <= high <= 1
    assert top_candidate_hits(candidates, pd.Series(["a", "b", "c", "d"])) == 0.25


def test_the_bootstrap_resamples_patients_not_lesions():
    # Two patients: one with 9 lesions all found, one with 1 missed. Drawing patients, a
    # replicate holds 0, 9 or 18 found lesions of 10 or so: never 8 of 10.
    candidates = pd.DataFrame(
        [r for i in range(9) for r in _ranked(f"x{i}", 1, 3)] + _ranked("y", None, 3)
    )
    lesions = pd.DataFrame({"lesion_id": [f"x{i}-l" for i in range(9)] + ["y-l"]})
    patients = np.array(["px"] * 9 + ["py"])
    summary = recall_summary(candidates, lesions, patients, 0.0, BOOT)
    assert summary["recall_at_1"] == 0.9
    assert summary["recall_at_1_ci"][0] == 0.0 and summary["recall_at_1_ci"][1] == 1.0


@pytest.mark.slow
def test_every_image_is_scored_by_a_detector_that_never_saw_its_patient(
    resampled, repo_params, tmp_path
):
    params = small(copy.deepcopy(repo_params))
    params["detector"]["cross_validation_folds"] = 3
    params["detector"]["radiograph"].update(epochs=2, validate_every=1)
    params["detector"]["volume"].update(epochs=1, validate_every=1)
    resample_dir = resampled[0]
    fold_dirs = [tmp_path / f"fold{k}" for k in range(3)]
    summary = {}
    for fold, folder in enumerate(fold_dirs):
        summary.update(run_detector_cv_fold(resample_dir, fold, folder, params))
    with pytest.raises(ValueError, match="not the candidates of folds 0-2"):
        run_detector_cv(
            resample_dir, [fold_dirs[0], fold_dirs[0], fold_dirs[2]], tmp_path / "x", params
        )
    out = tmp_path / "report"
    summary.update(run_detector_cv(resample_dir, fold_dirs, out, params))

    manifest = pd.read_parquet(resample_dir / "manifest.parquet")
    folds = pd.read_csv(out / "folds.csv", dtype={"patient_id": str})
    fold_of = folds.set_index("patient_id")["fold"]
    assert set(fold_of.index) == set(manifest["patient_id"])
    fold_of_image = manifest.set_index("image_id")["patient_id"].map(fold_of)
    for kind in ("radiograph", "volume"):
        images = manifest[manifest["kind"] == kind]
        for fold in range(3):
            scored, chooser = fold_roles(fold, 3)
            expected = int((~fold_of_image[images["image_id"]].isin([scored, chooser])).sum())
            assert summary[f"{kind}_fold{fold}_train_images"] == expected
            assert (fold_dirs[fold] / f"{kind}_fold{fold}.pt").is_file()
            # A fold's detector scored only its own fold's images.
            candidates = pd.read_parquet(fold_dirs[fold] / "candidates.parquet")
            assert (fold_of_image[candidates["image_id"]] == scored).all()
    for kind in ("radiograph", "volume"):
        recall = [summary[f"{kind}_recall_at_{k}"] for k in (1, 10, 20, 100)]
        assert all(0 <= r <= 1 for r in recall) and recall == sorted(recall)
    per_fold = pd.read_csv(out / "per_fold.csv")
    assert sorted(per_fold["fold"].unique()) == [0, 1, 2]
    assert per_fold.groupby("kind")["images"].sum().to_dict() == (
        manifest.groupby("kind").size().to_dict()
    )
    report = (out / "report.md").read_text()
    assert "lesion recall, best 10 candidates per image" in report
    assert json.loads((out / "summary.json").read_text())["folds"] == 3


def test_the_folds_are_snakemake_jobs_and_dvc_stages_alike(tmp_path):
    """With cross-validation on, each fold is one job (DVC: one foreach stage each) and the
    pooled stage reads them all; both run the same commands on the same files and keys."""
    from dvc.repo import Repo

    from medtailor.config.stage_keys import stage_keys

    from .test_workflow import snakemake_jobs

    project = tmp_path / "project"
    run([str(BIN / "medtailor"), "init", str(project), "--task", "detection"], tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["detector"]["cross_validation_folds"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "python"), "-m", "medtailor.workflow.dvc_stages", str(project)], tmp_path)
    jobs = {n: j for n, j in snakemake_jobs(project).items() if n.startswith("detector_cv")}
    assert set(jobs) == {
        "detector_cv_fold@0",
        "detector_cv_fold@1",
        "detector_cv_fold@2",
        "detector_cv",
    }
    assert jobs["detector_cv"]["input"] == {
        "data/resample",
        *(f"data/detector_cv/folds/fold{k}" for k in range(3)),
    }
    with Repo(str(project)) as repo:
        stages = {s.name: s for s in repo.index.stages if s.name.startswith("detector_cv")}
    assert set(stages) == set(jobs)
    for name, stage in stages.items():
        assert re.sub(r" --threads \S+", "", stage.cmd) == jobs[name]["cmd"], name
        assert {o.def_path for o in stage.outs} == jobs[name]["output"], name
        keys = {key for d in stage.deps if d.def_path == "params.yaml" for key in d.params}
        assert keys == set(stage_keys(name.partition("@")[0])), name
