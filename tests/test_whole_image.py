"""Whole-image classification: annotations/classes.csv through ingest, resample, split,
patches (one sample per image), train and evaluate, for binary, multi-class and
multi-label tasks; masked unknowns stay out of the loss and the metrics."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from medtailor.config import validate_params
from medtailor.evaluate import run_evaluate
from medtailor.ingest import run_ingest
from medtailor.patches import run_patches
from medtailor.patches.store import PatchStore
from medtailor.resample import run_resample
from medtailor.split import run_split
from medtailor.train import run_train
from medtailor.train.objectives import class_aucs, masked_bce_with_logits, mean_auc

from .conftest import small
from .tiny_store import TINY_ENTRY

PATIENTS, IMAGES_PER_PATIENT = 20, 3
HEIGHT, WIDTH = 32, 48  # not square: the sample keeps the aspect and is padded


def draw(rng: np.random.Generator, disc: bool, bar: bool) -> np.ndarray:
    image = rng.normal(60, 15, (HEIGHT, WIDTH))
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    if disc:
        cy, cx = rng.integers(8, HEIGHT - 8), rng.integers(8, WIDTH // 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] += 150
    if bar:
        x = rng.integers(WIDTH // 2 + 2, WIDTH - 6)
        image[4 : HEIGHT - 4, x : x + 3] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


def write_raw(raw, task: str) -> pd.DataFrame:
    """Images of 20 patients, three each; the classes table for ``task``."""
    rng = np.random.default_rng(1)
    rows, subjects = [], []
    for p in range(PATIENTS):
        for k in range(IMAGES_PER_PATIENT):
            source = f"p{p:02d}/img{k}.png"
            (raw / f"p{p:02d}").mkdir(parents=True, exist_ok=True)
            if task == "binary":
                disc, bar = k == 0, False
                row = {"label": int(disc)}
            elif task == "multiclass":
                name = ["normal", "disc", "bar"][(p + k) % 3]
                disc, bar = name == "disc", name == "bar"
                row = {"label": name}
            else:
                disc, bar = (p + k) % 2 == 0, k != 1
                # Every fifth disc cell unknown, and CheXpert's -1 (uncertain) once a patient.
                row = {
                    "disc": "" if (p * 3 + k) % 5 == 0 else int(disc),
                    "bar": -1 if k == 2 and p % 2 else int(bar),
                }
            Image.fromarray(draw(rng, disc, bar)).save(raw / source)
            rows.append({"source": source, **row})
            subjects.append({"source": source, "patient": f"person-{p}"})
    (raw / "annotations").mkdir()
    table = pd.DataFrame(rows)
    table.to_csv(raw / "annotations" / "classes.csv", index=False)
    pd.DataFrame(subjects).to_csv(raw / "annotations" / "subjects.csv", index=False)
    return table


def whole_image_params(repo_params: dict) -> dict:
    params = small(repo_params)
    params["ingest"]["assumed_radiograph_spacing_mm"] = 1.0
    params["resample"]["radiograph_spacing_mm"] = [1.0, 1.0]
    params["patches"].update(
        {
            "source": "whole_image",
            "size_2d": [32, 32],
            "intensity": {"radiograph": {"mode": "percentile", "range": [1.0, 99.0]}},
        }
    )
    params["train"].update({k: v for k, v in TINY_ENTRY.items() if k in params["train"]})
    params["train"].update({"epochs": 12, "batch_size": 8, "learning_rate": 0.05})
    params["models"] = {
        "tiny_linear": {
            **{k: TINY_ENTRY[k] for k in ("model", "init", "unfreeze", "truncate")},
            "head": {"type": "linear"},
        },
        "tiny_nonlinear": {
            **{k: TINY_ENTRY[k] for k in ("model", "init", "unfreeze", "truncate")},
            "head": {"type": "nonlinear"},
        },
    }
    params["evaluate"]["gradcam_per_outcome"] = 0
    validate_params(params)
    return params


def run_pipeline(tmp_path, repo_params, task: str):
    raw = tmp_path / "raw"
    classes = write_raw(raw, task)
    params = whole_image_params(repo_params)
    # Activation maps for one task (they cost a backward pass per image).
    params["evaluate"]["gradcam_per_outcome"] = 2 if task == "multiclass" else 0
    ingest = run_ingest(raw, tmp_path / "ingest", params)
    run_resample(tmp_path / "ingest", tmp_path / "resample", params)
    run_split(tmp_path / "resample", tmp_path / "split.csv", params)
    summary = run_patches(
        tmp_path / "resample",
        tmp_path / "split.csv",
        None,
        tmp_path / "patches",
        params,
        tmp_path / "plots",
    )
    models = {}
    for name in params["models"]:
        run_train(
            name,
            tmp_path / "patches",
            tmp_path / "models" / name,
            tmp_path / "state" / name,
            params,
        )
        models[name] = tmp_path / "models" / name
    metrics = run_evaluate(
        models,
        tmp_path / "patches",
        tmp_path / "resample",
        tmp_path / "split.csv",
        tmp_path / "evaluate",
        params,
    )
    return {
        "classes": classes,
        "ingest": ingest,
        "patches": summary,
        "metrics": metrics,
        "store": PatchStore(tmp_path / "patches"),
        "params": params,
    }


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_classes_table_round_trip(tmp_path, repo_params, task):
    run = run_pipeline(tmp_path, repo_params, task)
    store, n_images = run["store"], PATIENTS * IMAGES_PER_PATIENT
    assert run["ingest"]["classified_images"] == n_images
    assert store.task()["task"] == task and store.task()["samples"] == "whole_image"
    assert len(store.index) == n_images and run["patches"]["images_without_class"] == 0
    # One sample per image, padded to a square with its aspect kept: the 48 x 32 image
    # fills the 32 columns along x and 21 or 22 of the 32 along y, zeros above and below.
    sample = store.array("radiograph", "train")[0]
    assert sample.shape == (32, 32)
    assert np.all(sample[:, :4] == 0) and np.all(sample[:, -4:] == 0)
    assert sample[:, 10:22].std() > 0
    assert (tmp_path / "plots" / "patches_classes.png").is_file()

    summary = json.loads((tmp_path / "evaluate" / "summary.json").read_text())
    report = (tmp_path / "evaluate" / "report.md").read_text()
    assert "Unit of every interval and test: the patient" in report
    expected = {
        "binary": ["1"],
        "multiclass": ["bar", "disc", "normal"],
        "multilabel": ["disc", "bar"],
    }[task]
    predictions = pd.read_parquet(tmp_path / "models" / "tiny_linear" / "predictions.parquet")
    for name, result in summary["models"].items():
        assert list(result["classes"]) == expected
        # The images are easy: every class is learnt well above chance.
        assert result["test_mean"]["auc"] > 0.8, (name, result["test_mean"])
        low, high = result["test_mean"]["auc_ci"]
        assert low <= result["test_mean"]["auc"] <= high
    comparisons = summary["comparisons"]
    assert {row["target"] for row in comparisons} == set(expected)
    assert all("delong_p" in row for row in comparisons if "undefined" not in row)

    for section in ("## Evidence", "## Validation AUC per model", "## Operating point per class"):
        assert section in report
    evidence = {row["split"]: row for row in summary["evidence"]["splits"]}
    index = store.index
    for split, row in evidence.items():
        assert row["images"] == (index["split"] == split).sum()
        assert row["patients"] == index.loc[index["split"] == split, "patient_id"].nunique()
    if task == "multiclass":
        # The confusion matrix and accuracies, recomputed from predictions.parquet alone.
        test = predictions[predictions["split"] == "test"]
        probs = test.pivot(index="patch_id", columns="target", values="prob")
        truth = test[test["label"] == 1].set_index("patch_id")["target"].loc[probs.index]
        predicted = probs.idxmax(axis=1)
        classes = summary["models"]["tiny_linear"]["test_argmax"]["classes"]
        expected_matrix = pd.crosstab(truth, predicted).reindex(
            index=classes, columns=classes, fill_value=0
        )
        argmax = summary["models"]["tiny_linear"]["test_argmax"]
        assert argmax["confusion_matrix"] == expected_matrix.to_numpy().tolist()
        assert argmax["accuracy"] == pytest.approx((truth == predicted).mean())
        recalls = [(predicted[truth == c] == c).mean() for c in classes]
        assert argmax["balanced_accuracy"] == pytest.approx(np.mean(recalls))
        assert "## Multi-class decisions (test split)" in report and "Confusion matrix" in report
        assert (tmp_path / "evaluate" / "models" / "tiny_linear_confusion.csv").is_file()
        # LayerCAM per class on validation images of each class.
        assert "## Activation maps" in report
        assert (tmp_path / "evaluate" / "figures" / "cam_tiny_linear.png").is_file()
    else:
        assert "## Activation maps" not in report

    if task == "multilabel":
        # Unknown cells (blank, and -1 uncertain) are -1 in the predictions and left out of
        # the per-finding AUC: its n counts the known test images only.
        test = predictions[predictions["split"] == "test"]
        for finding in expected:
            part = test[test["target"] == finding]
            known = int((part["label"] >= 0).sum())
            assert known < len(part)
            assert summary["models"]["tiny_linear"]["classes"][finding]["test"]["n"] == known


def test_masked_unknowns_change_neither_loss_nor_gradient_nor_auc():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(12, 3)), requires_grad=True)
    targets = torch.tensor(rng.integers(0, 2, (12, 3)))
    targets[::4, 1] = -1
    loss = masked_bce_with_logits(logits, targets)
    loss.backward()
    gradient = logits.grad.clone()
    # Whatever the logits of the unknown cells, the loss over the known ones is the same,
    # and the unknown cells get no gradient.
    changed = logits.detach().clone()
    changed[::4, 1] = 50.0
    assert torch.allclose(masked_bce_with_logits(changed, targets), loss)
    assert torch.all(gradient[::4, 1] == 0)
    known = targets != -1
    reference = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.detach()[known].float(), targets[known].float()
    )
    assert torch.allclose(loss.detach(), reference)

    task = {"task": "multilabel", "classes": ["a", "b", "c"]}
    probs = rng.random((12, 3))
    aucs = class_aucs(targets.numpy(), probs, task)
    probs_changed = probs.copy()
    probs_changed[::4, 1] = 1.0  # an unknown cell with any score leaves the AUC unchanged
    assert class_aucs(targets.numpy(), probs_changed, task) == aucs
    mask = targets.numpy()[:, 1] != -1
    from sklearn.metrics import roc_auc_score

    assert aucs[1] == pytest.approx(roc_auc_score(targets.numpy()[mask, 1], probs[mask, 1]))
    assert mean_auc(targets.numpy(), probs, task) == pytest.approx(np.mean(aucs))


def test_bad_classes_rows_are_audited_and_the_rest_kept(tmp_path, repo_params):
    raw = tmp_path / "raw"
    write_raw(raw, "multilabel")
    table = pd.read_csv(raw / "annotations" / "classes.csv", dtype=str, keep_default_na=False)
    table.loc[0, "disc"] = "maybe"
    table = pd.concat([table, pd.DataFrame([{"source": "nowhere.png", "disc": "1", "bar": "0"}])])
    table.to_csv(raw / "annotations" / "classes.csv", index=False)
    params = whole_image_params(repo_params)
    summary = run_ingest(raw, tmp_path / "ingest", params)
    audit = pd.read_csv(tmp_path / "ingest" / "audit.csv")
    reasons = " ".join(audit["reason"])
    assert "row 2: disc='maybe' is not 1, 0, -1 or blank" in reasons
    assert "'nowhere.png' matches no ingested image" in reasons
    assert summary["classified_images"] == PATIENTS * IMAGES_PER_PATIENT - 1


@pytest.mark.slow
def test_a_whole_image_project_runs_under_snakemake_without_a_detector(tmp_path, repo_params):
    """``medtailor init --task whole-image`` on a folder of PNGs with a classes table:
    params.yaml holds only that task's blocks, Snakemake runs ingest to evaluate with no
    detector job and exits 0, dvc.lock then holds every stage that ran and ``dvc status`` is
    clean (no synthetic demo stage)."""
    from medtailor.config import load_params

    from .conftest import BIN, run

    project = tmp_path / "project"
    write_raw(project / "raw", "multiclass")
    run(
        [str(BIN / "medtailor"), "init", str(project), "--task", "whole-image", "--input", "raw"],
        tmp_path,
    )
    params = load_params(project / "params.yaml")
    assert set(params) == {
        "seed", "ingest", "resample", "split", "patches", "train", "models", "evaluate",
        "compute", "tracking",
    }  # fmt: skip
    assert "min_score" not in params["patches"] and "froc" not in params["evaluate"]
    tiny = whole_image_params(repo_params)
    for block in ("train", "models"):
        params[block] = tiny[block]
    params["patches"]["size_2d"] = tiny["patches"]["size_2d"]
    params["evaluate"].update(gradcam_per_outcome=0, bootstrap_replicates=100)
    params["ingest"]["assumed_radiograph_spacing_mm"] = 1.0
    params["resample"]["radiograph_spacing_mm"] = [1.0, 1.0]
    # Models renamed after init: the workflow regenerates dvc.yaml from params.yaml itself.
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake = str(BIN / "snakemake")
    plan = run([snakemake, "-n", "--nocolor"], project).stdout
    jobs = set(re.findall(r"^rule (\w+):", plan, re.M))
    assert jobs == {"ingest", "resample", "split", "patches", "train", "evaluate", "all"}
    assert "--candidates" not in plan
    dvc_stages = set(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    assert dvc_stages == {"ingest", "resample", "split", "patches", "train", "evaluate"}

    run([snakemake, "--cores", "2"], project)
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert set(metrics) >= {f"tiny_linear_test_auc_{c}" for c in ("bar", "disc", "normal")}
    assert "multi-class" in (project / "data" / "evaluate" / "report.md").read_text()
    assert (project / "plots" / "patches_classes.png").is_file()
    assert "Nothing to be done" in run([snakemake, "-n"], project).stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == {
        "ingest", "resample", "split", "patches", "train@tiny_linear", "train@tiny_nonlinear",
        "evaluate",
    }  # fmt: skip
    status = run([str(BIN / "dvc"), "status"], project).stdout
    assert "up to date" in status, status
    assert not (project / "data" / "synth").exists()
    # Where the time went: Snakemake's benchmark of every job, summed per stage by status.
    assert (project / "benchmarks" / "train" / "tiny_linear.tsv").is_file()
    assert "time per stage" in run([str(BIN / "medtailor"), "status"], project).stdout

    # The trained model applied to the raw images as new scans: its class probabilities
    # for the test images equal the project's, and the most probable class is named.
    out = tmp_path / "predicted"
    model = project / "data" / "models" / "tiny_linear"
    cmd = [
        str(BIN / "medtailor"),
        "predict",
        "--model",
        str(model),
        "--input",
        str(project / "raw"),
    ]
    run([*cmd, "--output", str(out)], tmp_path)
    findings = pd.read_csv(out / "findings.csv")
    assert findings["image_id"].nunique() == PATIENTS * IMAGES_PER_PATIENT
    assert set(findings["target"]) == {"bar", "disc", "normal"}
    trained = pd.read_parquet(model / "predictions.parquet")
    test = trained[trained["split"] == "test"].assign(image_id=lambda f: f["patch_id"].str[:-6])
    joined = test.merge(findings, on=["image_id", "target"], suffixes=("", "_new"))
    assert len(joined) == len(test) > 0
    np.testing.assert_allclose(joined["prob_new"], joined["prob"], atol=1e-5)
    per_image = findings.pivot(index="image_id", columns="target", values="prob")
    argmax = findings.drop_duplicates("image_id").set_index("image_id")["argmax"]
    assert (per_image.idxmax(axis=1) == argmax.loc[per_image.index]).all()
    assert len(list((out / "overlays").glob("*.png"))) == PATIENTS * IMAGES_PER_PATIENT


def test_whole_images_with_the_search_enabled_are_refused_before_any_work(repo_params):
    from medtailor.config import ParamsError

    params = whole_image_params(repo_params)
    params["search"]["enabled"] = True
    with pytest.raises(ParamsError, match=r"search\.enabled is true but patches\.source is whole"):
        validate_params(params)


def test_the_pretraining_boost_pairs_models_that_differ_only_in_init():
    from sklearn.metrics import roc_auc_score

    from medtailor.evaluate.whole_image import initialisation_pairs, pretraining_boosts

    rng = np.random.default_rng(0)
    n = 120
    labels = rng.integers(0, 2, n)
    patients = np.repeat(np.arange(n // 2), 2).astype(str)

    def frame(noise: float) -> pd.DataFrame:
        prob = 1 / (1 + np.exp(-(labels * 2 - 1) * 2 - rng.normal(0, noise, n)))
        return pd.DataFrame(
            {"patch_id": np.arange(n), "split": "test", "target": "1", "label": labels,
             "prob": prob, "patient_id": patients}
        )  # fmt: skip

    entry = {"model": "resnet10t", "head": {"type": "linear"}, "unfreeze": "all"}
    results = {
        "a_imagenet": {"config": {**entry, "init": "imagenet"}},
        "a_scratch": {"config": {**entry, "init": "scratch"}},
        "b_scratch": {"config": {**entry, "init": "scratch", "head": {"type": "nonlinear"}}},
    }
    assert initialisation_pairs(results) == [("a_imagenet", "a_scratch")]
    frames = {"a_imagenet": frame(0.5), "a_scratch": frame(3.0), "b_scratch": frame(3.0)}
    cfg = {"bootstrap_replicates": 200, "confidence_level": 0.95}
    (boost,) = pretraining_boosts(results, frames, cfg, seed=0)
    expected = roc_auc_score(labels, frames["a_imagenet"]["prob"]) - roc_auc_score(
        labels, frames["a_scratch"]["prob"]
    )
    assert boost["difference"] == pytest.approx(expected)
    low, high = boost["difference_ci"]
    assert low < expected < high
