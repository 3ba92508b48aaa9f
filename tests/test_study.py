"""Studies: a compact params block expands into named configurations, each trained as its
own job; Snakemake reruns only the configurations whose expanded entry changed; the zoo's
analysis (AUC with CIs, pre-training boost, Spearman correlations) and its figures."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from medtailor.study import configuration_label, configuration_values, study_configurations
from medtailor.study.analysis import spearman_with_ci

from .conftest import BIN, ENV, run
from .test_whole_image import whole_image_params, write_raw


def test_the_zoo_expands_to_every_architecture_init_and_truncation(repo_params):
    params = json.loads(json.dumps(repo_params))
    params["studies"]["zoo"].update(
        {
            "architectures": ["resnet18", "densenet121"],
            "inits": ["imagenet", "scratch"],
            "truncate": [0, 2],
        }
    )
    configurations = study_configurations(params, "zoo")
    assert sorted(configurations) == sorted(
        f"{a}_{i}{'_trunc2' if t else ''}"
        for a in ("resnet18", "densenet121")
        for i in ("imagenet", "scratch")
        for t in (0, 2)
    )
    entry = configurations["densenet121_scratch_trunc2"]
    assert (entry["model"], entry["init"], entry["truncate"]) == ("densenet121", "scratch", 2)
    # Every configuration is a full train entry: the train recipe under the study's recipe,
    # the study's shared keys.
    recipe = {**params["train"], **params["studies"]["zoo"]["recipe"]}
    assert entry["epochs"] == recipe["epochs"]
    assert entry["learning_rate"] == params["train"]["learning_rate"]
    assert entry["head"] == params["studies"]["zoo"]["entry"]["head"]

    # Adding an architecture leaves the other configurations' values (what Snakemake
    # compares) unchanged; a recipe change reaches every configuration.
    before = configuration_values(params, "zoo", "resnet18_imagenet")
    params["studies"]["zoo"]["architectures"].append("mobilenetv3_large_100")
    assert configuration_values(params, "zoo", "resnet18_imagenet") == before
    params["studies"]["zoo"]["recipe"] = {"epochs": 3}
    assert configuration_values(params, "zoo", "resnet18_imagenet") != before


def test_spearman_matches_scipy_and_its_interval_covers_it():
    rng = np.random.default_rng(3)
    x = rng.normal(size=12)
    y = x + rng.normal(scale=0.8, size=12)
    result = spearman_with_ci(x, y, 500, 0.95, seed=1)
    rho, p = stats.spearmanr(x, y)
    assert result["rho"] == pytest.approx(rho) and result["p_value"] == pytest.approx(p)
    low, high = result["rho_ci"]
    assert low < rho < high and low >= -1 and high <= 1
    assert "undefined" in spearman_with_ci(x[:2], y[:2], 100, 0.95, seed=1)


@pytest.mark.slow
def test_the_zoo_runs_under_snakemake_and_reruns_only_new_configurations(tmp_path, repo_params):
    """A whole-image project runs ``snakemake study_zoo``: Lite0 with ImageNet weights and
    from scratch, each its own job, then the analysis; a truncation added to the block
    trains that configuration alone."""
    project = tmp_path / "project"
    run([str(BIN / "medtailor"), "init", str(project)], tmp_path)
    write_raw(project / "raw", "binary")
    params = whole_image_params(repo_params)
    params["ingest"]["input"] = "raw"
    params["seg_models"] = {}
    params["studies"]["zoo"].update(
        {
            "enabled": True,
            "architectures": ["efficientnet_lite0"],
            "inits": ["imagenet", "scratch"],
            "truncate": [0],
            "recipe": {"epochs": 6},
        }
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake = str(BIN / "snakemake")
    run([snakemake, "--cores", "2", "study_zoo"], project)

    report = project / "data" / "studies" / "zoo" / "report"
    summary = json.loads((report / "summary.json").read_text())
    table = {row["configuration"]: row for row in summary["table"]}
    assert set(table) == {"efficientnet_lite0_imagenet", "efficientnet_lite0_scratch"}
    pretrained = table["efficientnet_lite0_imagenet"]
    assert pretrained["parameters"] > 3e6 and pretrained["macs"] > 0
    assert pretrained["test_auc_ci_low"] <= pretrained["test_auc"] <= pretrained["test_auc_ci_high"]
    boost = pretrained["pretraining_boost"]
    assert boost == pytest.approx(
        pretrained["test_auc"] - table["efficientnet_lite0_scratch"]["test_auc"]
    )
    assert (
        pretrained["pretraining_boost_ci_low"] <= boost <= pretrained["pretraining_boost_ci_high"]
    )
    assert table["efficientnet_lite0_scratch"]["pretraining_boost"] is None
    assert (report / "figures" / "auc_vs_parameters.png").is_file()
    assert (
        "| efficientnet_lite0_imagenet | efficientnet_lite0 | imagenet |"
        in (report / "report.md").read_text()
    )
    metrics = json.loads((project / "metrics" / "studies" / "zoo.json").read_text())
    assert metrics["efficientnet_lite0_imagenet_test_auc"] == pytest.approx(pretrained["test_auc"])
    # Each configuration is its own job with its own MLflow run and metrics.
    assert (project / "metrics" / "studies" / "zoo" / "efficientnet_lite0_scratch.json").is_file()
    # The pipeline opened one run for the study: each configuration's run is its child and
    # the analysis logged into it.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (study_run,) = [r for r in runs if r.info.run_name == "study:zoo"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id]
    assert {r.data.tags.get("medtailor.model") for r in children} == set(table)
    assert study_run.info.status == "FINISHED"
    assert study_run.data.metrics["efficientnet_lite0_imagenet_test_auc"] == pytest.approx(
        pretrained["test_auc"]
    )

    # A truncation added to the block: only the new configuration trains, then the analysis.
    params["studies"]["zoo"]["truncate"] = [0, 1]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plan = run([snakemake, "-n", "--nocolor", "study_zoo"], project).stdout
    trained = re.findall(r"wildcards: study=zoo, config=(\w+)", plan)
    assert sorted(trained) == [
        "efficientnet_lite0_imagenet_trunc1",
        "efficientnet_lite0_scratch_trunc1",
    ]
    assert set(re.findall(r"^rule (\w+):", plan, re.M)) == {"study_train", "study", "study_zoo"}

    # Weights that are not here: the study stops before any job, naming the file ...
    missing = tmp_path / "nowhere" / "lite0_weights.pt"
    params["studies"]["zoo"]["inits"] = ["imagenet", "scratch", f"file:{missing}"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused = subprocess.run(
        [snakemake, "-n", "study_zoo"], cwd=project, env=ENV, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert f"efficientnet_lite0_file-lite0_weights needs the weights file {missing}" in (
        refused.stdout + refused.stderr
    )
    # ... or, when allowed, runs the rest and marks the missing rows in the report.
    params["studies"]["zoo"]["allow_missing_weights"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([snakemake, "--cores", "2", "study_zoo"], project)
    summary = json.loads((report / "summary.json").read_text())
    rows = {row["configuration"]: row for row in summary["table"]}
    assert rows["efficientnet_lite0_file-lite0_weights"]["status"].startswith(
        "not run: needs the weights file"
    )
    assert rows["efficientnet_lite0_scratch_trunc1"]["status"] == "trained"
    assert "not run: needs the weights file" in (report / "report.md").read_text()
    # Each truncated network against its whole twin: the paired AUC difference.
    truncation = {row["configuration"]: row for row in summary["truncation"]}
    assert set(truncation) == {
        "efficientnet_lite0_imagenet_trunc1",
        "efficientnet_lite0_scratch_trunc1",
    }
    for name, row in truncation.items():
        whole = rows[row["whole"]]
        assert row["auc_difference"] == pytest.approx(rows[name]["test_auc"] - whole["test_auc"])
        assert (
            row["auc_difference_ci_low"] <= row["auc_difference"] <= row["auc_difference_ci_high"]
        )
        assert 0 < row["parameter_share"] < 1
    assert "## Truncation" in (report / "report.md").read_text()


def test_imagenet_accuracy_is_the_one_of_the_weights_an_imagenet_init_loads():
    from medtailor.study.imagenet import SOURCE, imagenet_table, imagenet_top1, pretrained_weight

    # The offline Lite weights are the TensorFlow originals, not timm's own retraining.
    assert pretrained_weight("efficientnet_lite1") == "tf_efficientnet_lite1.in1k"
    assert imagenet_top1("efficientnet_lite1") == imagenet_table()["tf_efficientnet_lite1.in1k"]
    # Other architectures: timm's default weight; one the table lacks is NaN, not a guess.
    assert pretrained_weight("resnet50").startswith("resnet50.")
    assert np.isnan(imagenet_top1("cbr_small"))
    assert "0173a139" in SOURCE
    # A bigger Lite is better on ImageNet, as published.
    assert (
        imagenet_top1("efficientnet_lite0")
        < imagenet_top1("efficientnet_lite1")
        < imagenet_top1("efficientnet_lite2")
    )


def test_missing_weights_stop_a_study_before_any_job_unless_allowed(repo_params, tmp_path):
    from medtailor.study import StudyWeightsMissing, runnable_configurations

    params = json.loads(json.dumps(repo_params))
    weights = tmp_path / "lite1.pt"
    params["studies"]["zoo"]["inits"] = ["scratch", f"file:{weights}"]
    with pytest.raises(StudyWeightsMissing, match=f"needs the weights file {weights}"):
        runnable_configurations(params, "zoo")
    params["studies"]["zoo"]["allow_missing_weights"] = True
    assert runnable_configurations(params, "zoo") == [
        "efficientnet_lite0_scratch",
        "efficientnet_lite1_scratch",
    ]
    weights.write_bytes(b"")  # provided: every configuration runs
    assert len(runnable_configurations(params, "zoo")) == 4


def test_the_grid_expands_every_combination_and_refuses_unknown_factors(repo_params):
    from medtailor.config import ParamsError, validate_params

    params = json.loads(json.dumps(repo_params))
    grid = params["studies"]["grid"]
    configurations = study_configurations(params, "grid")
    sizes = [len(levels) for levels in grid["factors"].values()]
    assert len(configurations) == int(np.prod(sizes))
    first = configurations["model0-head1-unfreeze0-learning_rate1"]
    assert first["model"] == grid["factors"]["model"][0]
    # The MLflow UI names it by its levels, not their indices.
    label = configuration_label(params, "grid", "model0-head1-unfreeze0-learning_rate1")
    head = ";".join(f"{k}:{v}" for k, v in grid["factors"]["head"][1].items())
    assert label == (
        f"model={grid['factors']['model'][0]},head={head},"
        f"unfreeze={grid['factors']['unfreeze'][0]},"
        f"learning_rate={grid['factors']['learning_rate'][1]}"
    )
    assert first["head"] == grid["factors"]["head"][1]
    assert first["learning_rate"] == grid["factors"]["learning_rate"][1]
    grid["factors"]["learnig_rate"] = [0.1]
    with pytest.raises(ParamsError, match=r"studies\.grid\.factors\.learnig_rate: not a model"):
        validate_params(params)


def test_factor_effects_are_the_exact_small_sample_test_and_fold_in_the_test_set_noise():
    """The issue's 2x2 grid (breast ultrasound): a mixed model's Wald z gave init p = 4e-8;
    with one residual degree of freedom the exact test (statsmodels OLS on the same four
    AUCs) gives 0.11 and 0.20, and so does the grid's table when the AUCs are exact."""
    import statsmodels.formula.api as smf

    from medtailor.study.grid import factor_effects_table

    frame = pd.DataFrame(
        {
            "init": ["imagenet", "imagenet", "scratch", "scratch"],
            "learning_rate": [0.001, 0.01, 0.001, 0.01],
            "test_auc": [0.686, 0.639, 0.609, 0.585],
        }
    )
    exact = factor_effects_table(frame, ["init", "learning_rate"], np.zeros((4, 4)), 0.95)
    exact = exact.set_index(["factor", "level"])
    ols = smf.ols("test_auc ~ C(init) + C(learning_rate)", frame).fit()
    for (factor, level), term in (
        (("init", "scratch"), "C(init)[T.scratch]"),
        (("learning_rate", 0.01), "C(learning_rate)[T.0.01]"),
    ):
        row = exact.loc[(factor, level)]
        assert row["estimate"] == pytest.approx(ols.params[term])
        assert row["p_value"] == pytest.approx(ols.pvalues[term])
        assert row["ci_low"] == pytest.approx(ols.conf_int().loc[term, 0])
        assert row["df"] == pytest.approx(1.0) and row["factor_p"] == pytest.approx(row["p_value"])
    assert exact.loc[("init", "scratch"), "p_value"] == pytest.approx(0.1106, abs=1e-3)
    assert exact.loc[("init", "imagenet"), "reference"]
    # Each AUC measured on a small test set carries its own sampling error: folded in, the
    # same four numbers are weaker evidence still.
    sampling = np.full((4, 4), 0.0004) + np.eye(4) * 0.0008
    noisy = factor_effects_table(frame, ["init", "learning_rate"], sampling, 0.95)
    noisy = noisy.set_index(["factor", "level"])
    assert noisy.loc[("init", "scratch"), "p_value"] > exact.loc[("init", "scratch"), "p_value"]
    # Fewer configurations than a test needs: no p-value, and the reason.
    single = factor_effects_table(frame.head(3), ["init", "learning_rate"], np.zeros((3, 3)), 0.95)
    tested = single[~single["reference"].astype(bool)]
    assert len(tested) == 2 and "p_value" not in single.columns
    assert tested["undefined"].str.contains("no residual degree of freedom").all()
    unbalanced = pd.concat([frame, frame.iloc[[0]]], ignore_index=True).assign(
        init=["imagenet", "imagenet", "scratch", "other", "other"]
    )
    reasons = factor_effects_table(unbalanced, ["init"], np.zeros((5, 5)), 0.95)
    assert reasons["undefined"].dropna().str.contains("needs 2 configurations per level").all()


def test_a_small_grid_trains_and_is_analysed(tmp_path, repo_params):
    from medtailor.study import run_study, run_study_train

    from .tiny_store import TINY_ENTRY, write_tiny_store

    store = write_tiny_store(tmp_path / "store", {"train": 48, "val": 24, "test": 32})
    params = json.loads(json.dumps(repo_params))
    params["train"].update({k: v for k, v in TINY_ENTRY.items() if k in params["train"]})
    params["train"]["epochs"] = 3
    params["evaluate"]["bootstrap_replicates"] = 100
    params["studies"]["grid"] = {
        "enabled": True,
        "factors": {
            "head": [{"type": "linear"}, {"type": "nonlinear"}],
            "learning_rate": [0.05, 0.01],
        },
        "entry": {"model": "resnet10t", "init": "scratch", "unfreeze": "all", "truncate": 0},
        "recipe": {},
    }
    names = list(study_configurations(params, "grid"))
    for name in names:
        run_study_train(
            "grid", name, store, tmp_path / "models" / name, tmp_path / "state" / name, params
        )
    metrics = run_study("grid", tmp_path / "models", store, tmp_path / "report", params)
    assert set(metrics) == {f"{n}_test_auc" for n in names}
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {row["factor"] for row in summary["factor_effects"]} == {"head", "learning_rate"}
    assert len(summary["best"]) == 2 and summary["comparisons"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Factor effects" in report and "(reference)" in report
    assert "specificity 0.8" in report  # the matched operating point of the comparisons
    assert (tmp_path / "report" / "figures" / "auc_by_factor.png").is_file()


def test_linear_cka_of_a_layer_with_itself_is_one_and_ignores_rotations():
    from scipy.stats import ortho_group

    from medtailor.study.analysis import linear_cka

    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 12))
    rotation = ortho_group.rvs(12, random_state=1)
    assert linear_cka(features, features) == pytest.approx(1.0)
    assert linear_cka(features, features @ rotation) == pytest.approx(1.0)
    assert linear_cka(features, 3.0 * features) == pytest.approx(1.0)
    # Unrelated representations are far from 1.
    assert linear_cka(features, rng.normal(size=(40, 12))) < 0.6


def test_a_small_transfusion_study_trains_and_is_analysed(tmp_path, repo_params):
    from medtailor.study import run_study, run_study_train

    from .tiny_store import TINY_ENTRY, write_tiny_store

    store = write_tiny_store(tmp_path / "store", {"train": 48, "val": 24, "test": 32})
    params = json.loads(json.dumps(repo_params))
    params["train"].update({k: v for k, v in TINY_ENTRY.items() if k in params["train"]})
    params["train"]["epochs"] = 3
    params["evaluate"]["bootstrap_replicates"] = 100
    params["studies"]["transfusion"].update(
        {
            "enabled": True,
            "architectures": ["efficientnet_lite0"],
            "small_models": ["cbr_tiny"],
            "transfuse_stages": [1],
            "target_auc": 0.7,
            "cka_images": 16,
        }
    )
    names = list(study_configurations(params, "transfusion"))
    assert names == [
        "efficientnet_lite0_imagenet",
        "efficientnet_lite0_scratch",
        "efficientnet_lite0_mean_var",
        "efficientnet_lite0_transfuse1",
        "cbr_tiny_scratch",
    ]
    for name in names:
        run_study_train(
            "transfusion",
            name,
            store,
            tmp_path / "models" / name,
            tmp_path / "state" / name,
            params,
        )
    run_study("transfusion", tmp_path / "models", store, tmp_path / "report", params)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    cka = pd.DataFrame(summary["cka"])
    assert set(cka["configuration"]) == {
        "efficientnet_lite0_imagenet",
        "efficientnet_lite0_scratch",
    }
    assert cka["cka"].between(0, 1.0001).all()
    # Every layer group of Lite0 (stem, 7 stages, head convolution) has a value.
    assert cka.groupby("configuration").size().min() >= 8
    table = {row["configuration"]: row for row in summary["table"]}
    history = pd.read_csv(tmp_path / "models" / "cbr_tiny_scratch" / "history.csv")
    reached = history.loc[history["val_auc"] >= 0.7, "epoch"]
    expected = int(reached.iloc[0]) if len(reached) else None
    assert table["cbr_tiny_scratch"]["epochs_to_target"] == expected
    figures = {Path(f).name for f in summary["figures"]}
    assert {"convergence.png", "cka.png", "transfusion.png"} <= figures


@pytest.mark.parametrize("sizes", [[3.4, 3.7, 4.4, 4.6], [0.5, 3.0, 25.0, 120.0], [4.0, 4.0]])
def test_the_parameter_axis_labels_round_values_without_overlap(sizes):
    """Zoo models of 3.4-4.6 M parameters printed overlapping minor-tick labels."""
    from medtailor.figures import log_parameter_axis, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(sizes, np.linspace(0.6, 0.8, len(sizes)), "o")
    log_parameter_axis(ax, sizes)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [
        t.get_window_extent(renderer)
        for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
        if t.get_text() and t.get_visible()
    ]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert 2 <= len(ticks) <= 8
    boxes = sorted(labels, key=lambda box: box.x0)
    assert all(a.x1 <= b.x0 for a, b in itertools.pairwise(boxes))
    plt.close(fig)
