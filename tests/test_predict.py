"""`medtailor predict`: the suite's trained project applied to its own scans and to a
second synthetic cohort, through the command a user runs."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import BIN, ENV, small
from tests.test_pipeline_cli import planted_identifiers, readable_text

pytestmark = pytest.mark.slow


def predict(
    model: str | Path, raw: Path, out: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(BIN / "medtailor"), "predict", "--model", str(model), "--input", str(raw),
         "--output", str(out), "--threads", "2"],
        capture_output=True, text=True, env=env or ENV, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def own_scans(pipeline_run, tmp_path_factory) -> dict:
    """The trained project's first model applied to the project's own raw folder."""
    project = pipeline_run.folder
    name = sorted(p.name for p in (project / "data" / "models").iterdir())[0]
    out = tmp_path_factory.mktemp("predict") / "own"
    done = predict(project / "data" / "models" / name, project / "data" / "synth", out)
    return {"project": project, "model": name, "out": out, "stdout": done.stdout}


def test_findings_on_the_test_split_equal_the_projects_predictions(own_scans):
    project, out = own_scans["project"], own_scans["out"]
    findings = pd.read_csv(out / "findings.csv")
    trained = pd.read_parquet(
        project / "data" / "models" / own_scans["model"] / "predictions.parquet"
    )
    test = trained[trained["split"] == "test"].set_index("patch_id")
    assert len(test) > 0
    # New scans are scored whatever their split was; the test patients' candidates are the
    # project's own test patches, so the probabilities must agree.
    joined = findings.set_index("candidate_id").loc[test.index]
    np.testing.assert_allclose(joined["prob"], test["prob"], atol=1e-5)

    # The threshold is the one the project's evaluation chose on validation.
    summary = json.loads((project / "data" / "evaluate" / "summary.json").read_text())
    chosen = summary["models"][own_scans["model"]]["test_operating_point"]["threshold"]
    threshold = findings["threshold"].iloc[0]
    assert threshold == pytest.approx(chosen, abs=1e-9)
    assert (findings["positive"] == (findings["prob"] >= threshold)).all()


def test_boxes_map_back_to_the_original_images_and_the_input_rows(own_scans):
    project, out = own_scans["project"], own_scans["out"]
    findings = pd.read_csv(out / "findings.csv")
    manifest = pd.read_parquet(project / "data" / "ingest" / "manifest.parquet")
    shapes = manifest.set_index("image_id")["shape"]
    for _, row in findings.iterrows():
        width, height = shapes.loc[row["image_id"]][:2]
        assert -1 <= row["px0"] < row["px1"] <= width + 1
        assert -1 <= row["py0"] < row["py1"] <= height + 1
    # source_row is the image's row in the sorted list of input files.
    files = sorted(
        p.relative_to(project / "data" / "synth").as_posix()
        for p in (project / "data" / "synth").rglob("*")
        if p.is_file() and "annotations" not in p.parts and not p.name.startswith(".")
    )
    ingested = pd.read_parquet(out / "work" / "ingest" / "manifest.parquet")
    for _, image in ingested[ingested["kind"] == "radiograph"].iterrows():
        source = files[int(image["source_row"]) - 1]
        assert source.startswith("dicom/") and source.endswith(image["source"].split("/")[-1])
    assert set(findings["source_row"]) <= set(ingested["source_row"])
    # An overlay per radiograph, those without a kept candidate too.
    overlays = {p.stem for p in (out / "overlays").glob("*.png")}
    assert overlays == set(ingested.loc[ingested["kind"] == "radiograph", "image_id"])
    assert set(findings["image_id"]) <= overlays


def test_a_second_cohort_through_the_bundle_is_identifier_free(own_scans, repo_params, tmp_path):
    from medtailor.synth import generate_dataset

    params = copy.deepcopy(small(repo_params))
    params["seed"] = int(params["seed"]) + 1
    cohort = tmp_path / "cohort"
    generate_dataset(params, cohort)
    # The bundle that the first run wrote travels alone: no project beside it.
    bundle = tmp_path / "travelled"
    shutil.copytree(own_scans["out"] / "model", bundle)
    out = tmp_path / "predicted"
    predict(bundle, cohort, out)
    findings = pd.read_csv(out / "findings.csv")
    assert len(findings) > 0 and findings["prob"].between(0, 1).all()
    own = pd.read_csv(own_scans["out"] / "findings.csv")
    assert not set(findings["image_id"]) & set(own["image_id"])

    identifiers = planted_identifiers(cohort)
    assert identifiers
    outputs = [p for p in out.rglob("*") if p.is_file()]
    for path in outputs:
        text = readable_text(path).lower()
        leaked = [value for value in identifiers if value.lower() in text]
        assert not leaked, f"{path.relative_to(out)} contains {leaked}"


def test_a_folder_that_is_no_model_is_refused(tmp_path):
    done = subprocess.run(
        [str(BIN / "medtailor"), "predict", "--model", str(tmp_path), "--input", str(tmp_path),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=ENV, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "neither a bundle" in done.stderr and str(tmp_path) in done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_registered_model_served_answers_like_predict(own_scans, tmp_path):
    from medtailor.imageio import load_nifti
    from medtailor.predict.serving import example_request, registered_name, request_files

    project = own_scans["project"]
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    uri = f"models:/{registered_name(project, own_scans['model'])}/1"
    # One radiograph of the project that has findings, sent as its pixels and spacing.
    own = pd.read_csv(own_scans["out"] / "findings.csv")
    manifest = pd.read_parquet(project / "data" / "ingest" / "manifest.parquet")
    row = manifest.set_index("image_id").loc[own["image_id"].iloc[0]]
    image, _ = load_nifti(project / "data" / "ingest" / row["image_path"])
    request = example_request(image, float(row["spacing"][0]))

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not start"
                time.sleep(1)
        body = json.dumps({"dataframe_records": request.to_dict(orient="records")}).encode()
        asked = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(asked, timeout=300) as response:
            served = pd.DataFrame(json.loads(response.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)

    # medtailor predict with the same registered model, on the same image as a file.
    raw = tmp_path / "raw"
    request_files(request, raw)
    out = tmp_path / "out"
    predict(uri, raw, out, env)
    predicted = pd.read_csv(out / "findings.csv")
    assert len(served) == len(predicted) > 0 and (served["input"] == 0).all()
    np.testing.assert_allclose(served["prob"], predicted["prob"], atol=1e-6)
    assert (served["positive"] == predicted["positive"]).all()
    # The same pixels and spacing: the same findings as the project's own file gave.
    first = own[own["image_id"] == own["image_id"].iloc[0]]
    np.testing.assert_allclose(sorted(served["prob"]), sorted(first["prob"]), atol=1e-4)


def test_an_external_validation_project_scores_a_new_cohort_without_training(
    pipeline_run, repo_params, tmp_path
):
    from sklearn.metrics import roc_auc_score

    from medtailor.synth import generate_dataset

    params = copy.deepcopy(small(repo_params))
    params["seed"] = int(params["seed"]) + 1
    cohort = tmp_path / "cohort"
    generate_dataset(params, cohort)
    folder = tmp_path / "external"
    done = subprocess.run(
        [str(BIN / "medtailor"), "init", str(folder), "--external", str(pipeline_run.folder),
         "--input", str(cohort)],
        capture_output=True, text=True, env=ENV, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2"],
        cwd=folder, capture_output=True, text=True, env=ENV, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    # No training job: the detector and the classifiers are the trained project's.
    rules = {
        p.relative_to(folder / "benchmarks").parts[0].removesuffix(".tsv")
        for p in (folder / "benchmarks").rglob("*.tsv")
    }
    assert rules == {"ingest", "resample", "split", "detect", "patches", "score", "evaluate"}
    summary = json.loads((folder / "data" / "evaluate" / "summary.json").read_text())
    assert summary["external"]["commit"] == pipeline_run.commit
    trained = sorted(p.name for p in (pipeline_run.folder / "data" / "models").iterdir())
    assert sorted(summary["models"]) == trained
    for name in trained:
        scores = pd.read_parquet(folder / "data" / "scores" / name / "predictions.parquet")
        assert set(scores["split"]) == {"test"}
        labelled = scores[scores["label"] >= 0]
        auc = roc_auc_score(labelled["label"], labelled["prob"])
        assert summary["models"][name]["test"]["auc"] == pytest.approx(auc, abs=1e-12)
        brier = float(np.mean((labelled["prob"] - labelled["label"]) ** 2))
        assert summary["models"][name]["calibration"]["brier"] == pytest.approx(brier)
        # The operating point is the trained project's threshold, not one chosen here.
        own = json.loads((pipeline_run.folder / "data" / "evaluate" / "summary.json").read_text())
        chosen = own["models"][name]["test_operating_point"]["threshold"]
        assert summary["models"][name]["test_operating_point"]["threshold"] == chosen
    report = (folder / "data" / "evaluate" / "report.md").read_text()
    for section in ("## Evidence", "## Discrimination", "## Calibration", "## Comparisons"):
        assert section in report
    assert "train" not in report.split("## Evidence")[1].split("##")[0].lower()
    assert pipeline_run.commit[:12] in report
    status = subprocess.run(
        [str(BIN / "dvc"), "status"], cwd=folder, capture_output=True, text=True, env=ENV
    )
    assert "up to date" in status.stdout, status.stdout
