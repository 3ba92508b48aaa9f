"""The evaluation stage end to end, and its refusal of input it cannot evaluate honestly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medtailor.evaluate.classification import EvaluationInputError, auc_with_ci, load_predictions
from medtailor.patches.store import PatchStore

pytestmark = pytest.mark.slow


def test_report_tables_figures_and_metrics(evaluation_run):
    out = evaluation_run["root"] / "evaluate"
    summary = json.loads((out / "summary.json").read_text())
    for name, result in summary["models"].items():
        test = result["test"]
        low, high = test["auc_ci"]
        assert low <= test["auc"] <= high and 0 < test["auc"] <= 1
        op = result["test_operating_point"]
        assert (
            0 <= op["threshold"] <= 1
            and op["sensitivity_ci"][0] <= op["sensitivity"] <= op["sensitivity_ci"][1]
        )
        froc = result["test_froc"]
        assert froc["aufroc_ci"][0] <= froc["aufroc"] <= froc["aufroc_ci"][1]
        assert (out / "models" / f"{name}.json").is_file()
        assert (out / "figures" / f"gradcam_{name}.png").is_file()
        # The pointing game on the val and test true positives, with its chance level.
        game = result["pointing_game"]
        assert game["method"] == "layercam"  # evaluate.cam_method, named in the report
        assert "LayerCAM maps of the target stage" in (out / "report.md").read_text()
        if game["true_positives"]:
            assert 0 <= game["hits"] <= game["true_positives"] and 0 < game["chance"] < 0.5
            line = f"- {name}: {game['hits']} of {game['true_positives']} ("
            assert line in (out / "report.md").read_text()
            assert evaluation_run["flat"][f"{name}_gradcam_pointing"] == pytest.approx(
                game["hits"] / game["true_positives"]
            )
        else:
            assert f"- {name}: no true positive to point at" in (out / "report.md").read_text()
    assert summary["detector_froc"]["lesions"] > 0
    (comparison,) = summary["comparisons"]
    assert 0 <= comparison["delong_p"] <= comparison["delong_p_holm"] <= 1
    report = (out / "report.md").read_text()
    assert "| lite0_imagenet | efficientnet_lite0 | imagenet |" in report
    assert "DeLong" in report and "figures/froc.png" in report
    # Every table says what its intervals and tests resample or model.
    assert report.count("Unit: **patient**") == 4 and "Unit: **model**" in report
    # The segmentation models' Dice, per class, from their own dice.parquet, their MACs at
    # 96^3 whatever patch they trained on, and their paired comparison.
    segmentation = summary["segmentation"]
    assert set(segmentation["models"]) == {"dynunet_tiny", "c2fnas_tiny"}
    for result in segmentation["models"].values():
        assert {row["class"] for row in result["test"]} == {"lesion", "bone"}
        assert result["patch_size"] == [16, 16, 16]
        assert result["macs_reported_patch"] == pytest.approx(result["macs"] * 216, rel=0.05)
    assert (
        "## Segmentation (test split)" in report and "| dynunet_tiny (dynunet) | bone |" in report
    )
    assert "| c2fnas_tiny (c2fnas) | lesion |" in report
    pairs = segmentation["comparisons"]
    assert {(r["first"], r["second"]) for r in pairs} == {("c2fnas_tiny", "dynunet_tiny")}
    for row in pairs:
        low, high = row["difference_ci"]
        assert low <= row["difference"] <= high and 0 <= row["p_value"] <= row["p_holm"] <= 1
    assert "Paired comparisons." in report and "figures/segmentation_dice_curves.png" in report
    assert "dynunet_tiny_test_dice_bone" in evaluation_run["flat"]
    assert "clustered DeLong test of AUC(a) = AUC(b) (Obuchowski 1997" in report
    # Decisions compared at one matched operating point, sensitivity and specificity apart.
    point = comparison["operating_point"]
    assert point["match"] == "specificity" and point["value"] == 0.8
    for rate in ("sensitivity", "specificity"):
        low, high = point[f"{rate}_difference_ci"]
        assert low <= point[f"{rate}_difference"] <= high and 0 <= point[f"{rate}_p"] <= 1
        assert point[f"{rate}_difference"] == pytest.approx(point[f"{rate}_a"] - point[f"{rate}_b"])
    assert "set on validation to specificity 0.8" in report
    assert "counts as a false positive" in report  # the FROC convention in force
    assert comparison["unit"] == "patient" and comparison["patients"] < comparison["patches"]
    assert f"**Few patients ({comparison['patients']}):**" in report
    for figure in ("roc.png", "froc.png", "auc_vs_parameters.png", "pretraining_boost.png"):
        assert (out / "figures" / figure).is_file()
    froc = pd.read_csv(out / "froc.csv")
    assert {"detector", "lite0_imagenet", "lite0_scratch"} == set(froc["model"])
    # The evidence section comes first; the tiny test set is below every default threshold.
    evidence = summary["evidence"]
    assert [row["split"] for row in evidence["table"]] == ["train", "val", "test"]
    assert any(w.startswith("test: ") for w in evidence["warnings"])
    assert report.index("## Evidence") < report.index("## Models")
    assert "**The numbers below rest on little evidence:**" in report
    assert evaluation_run["flat"]["evidence_warnings"] == len(evidence["warnings"])
    # The detector's own section: recall against candidates per image, per split.
    assert report.index("## Evidence") < report.index("## Detector") < report.index("## Models")
    assert (out / "figures" / "detector_recall.png").is_file()
    curve = pd.read_csv(out / "detector_recall.csv")
    assert set(curve["split"]) == {"val", "test"}
    for split, part in curve.groupby("split"):
        recall = part["recall"].to_numpy()
        assert np.all(np.diff(recall) >= 0) and 0 <= recall[0] <= recall[-1] <= 1
        row = summary["detector_recall"][split]
        assert row["recall_all"] == pytest.approx(recall[-1])
        assert row["lesions"] == part["lesions"].iloc[0] > 0
        assert f"| {split} | {row['lesions']} |" in report


@pytest.fixture()
def predictions(evaluation_run, tmp_path):
    source = pd.read_parquet(evaluation_run["folders"]["lite0_imagenet"] / "predictions.parquet")
    return source, tmp_path / "predictions.parquet"


def test_bad_predictions_are_refused_with_the_file_and_problem(evaluation_run, predictions):
    source, path = predictions
    index = PatchStore(evaluation_run["store"]).index

    bad = source.copy()
    bad.loc[0, "patch_id"] = "I0000-c99"
    bad.to_parquet(path)
    with pytest.raises(
        EvaluationInputError, match=r"predictions.parquet: 1 predictions for unknown patches"
    ):
        load_predictions(path, index)

    source[source["split"] == "val"].to_parquet(path)
    with pytest.raises(EvaluationInputError, match="no predictions for the test split"):
        load_predictions(path, index)

    bad = source.copy()
    bad.loc[[0, 1], "prob"] = np.nan
    bad.to_parquet(path)
    with pytest.raises(EvaluationInputError, match="2 NaN probabilities"):
        load_predictions(path, index)


def test_a_single_class_split_gives_a_marked_undefined_auc(evaluation_run, predictions):
    source, path = predictions
    source.to_parquet(path)
    frame = load_predictions(path, PatchStore(evaluation_run["store"]).index)
    negatives = frame[(frame["split"] == "test") & (frame["label"] == 0)]
    result = auc_with_ci(negatives, 50, 0.95, 0)
    assert result["auc"] is None and result["undefined"] == "single class"
