"""The built-in detector, the patch set it yields, and the external-boxes path."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from medtailor.detect import run_detect
from medtailor.detect.external import BoxFileError, load_external_boxes
from medtailor.patches import run_patches
from medtailor.patches.store import PatchStore
from medtailor.split import read_split
from medtailor.tables import read_manifest

pytestmark = pytest.mark.slow


def test_detector_finds_most_validation_lesions(detection_run):
    # Recall at score > 10 (of 100) and IoU > 0.5 on patients the detector never saw.
    assert detection_run["patches"]["val_lesions"] >= 5
    assert detection_run["patches"]["val_radiograph_recall"] >= 0.7
    assert detection_run["train"]["radiograph_best_val_recall"] >= 0.7
    assert any("volume_loss_classification" in m for _, m in detection_run["history"])
    assert (detection_run["root"] / "detector" / "volume.pt").is_file()


def test_every_split_has_positives_negatives_and_in_between_candidates(detection_run):
    index = PatchStore(detection_run["root"] / "patches").index
    for split, part in index.groupby("split"):
        assert (part["label"] == 1).any() and (part["label"] == 0).any(), split
        between = part[(part["best_iou"] >= 0.2) & (part["best_iou"] <= 0.5)]
        assert len(between), split
        # Ignored in training only; validation scores them exactly as test does.
        expected = -1 if split == "train" else 0
        assert (between["label"] == expected).all(), split
    assert set(index["split"]) == {"train", "val", "test"}


def test_no_patient_spans_two_splits_and_the_split_is_the_computed_one(detection_run):
    index = PatchStore(detection_run["root"] / "patches").index
    assert index.groupby("patient_id")["split"].nunique().max() == 1
    split = read_split(detection_run["split_csv"]).set_index("patient_id")["split"]
    assert (index["split"] == index["patient_id"].map(split)).all()


def test_detector_trains_on_the_training_split_only(detection_run, monkeypatch, tmp_path):
    import medtailor.detect.training as training

    seen: list[str] = []
    original = training.load_detection_images

    def spy(resample_dir, rows, intensity):
        seen.append(set(rows["split"]))
        return original(resample_dir, rows, intensity)

    params = copy.deepcopy(detection_run["params"])
    for kind in ("radiograph", "volume"):
        params["detector"][kind]["epochs"] = 1
    monkeypatch.setattr(training, "load_detection_images", spy)
    training.run_train_detector(
        detection_run["root"] / "resample", detection_run["split_csv"], tmp_path, params
    )
    # Per kind: the validation images, then the training images; never the test split.
    assert seen == [{"val"}, {"train"}, {"val"}, {"train"}]


def test_patch_store_matches_its_index(detection_run):
    store = PatchStore(detection_run["root"] / "patches")
    for (kind, split), rows in store.index.groupby(["kind", "split"]):
        array = store.array(kind, split)
        assert isinstance(array, np.memmap)
        assert array.shape[0] == len(rows) and sorted(rows["row"]) == list(range(len(rows)))
        assert array.shape[1:] == ((64, 64) if kind == "radiograph" else (32, 32, 32))
        assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1
    summary = detection_run["patches"]
    assert summary["patches"] == len(store)
    assert (detection_run["root"] / "plots" / "patches_iou.png").is_file()


def test_external_boxes_give_the_same_patch_set(detection_run, tmp_path):
    root = detection_run["root"]
    candidates = pd.read_parquet(root / "candidates.parquet")
    exported = tmp_path / "my_detector.csv"
    columns = ["image_id", "x0", "y0", "z0", "x1", "y1", "z1", "score"]
    candidates[columns].to_csv(exported, index=False)

    params = copy.deepcopy(detection_run["params"])
    params["detector"]["source"] = "external"
    params["detector"]["external_boxes"] = str(exported)
    run_detect(root / "resample", exported, tmp_path / "candidates.parquet", params)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "candidates.parquet"), candidates)
    run_patches(
        root / "resample",
        detection_run["split_csv"],
        tmp_path / "candidates.parquet",
        tmp_path / "patches",
        params,
    )
    builtin, external = PatchStore(root / "patches"), PatchStore(tmp_path / "patches")
    pd.testing.assert_frame_equal(builtin.index, external.index)
    for kind, split in builtin.index[["kind", "split"]].drop_duplicates().itertuples(index=False):
        np.testing.assert_array_equal(builtin.array(kind, split), external.array(kind, split))


@pytest.fixture()
def manifest(detection_run):
    return read_manifest(detection_run["root"] / "resample" / "manifest.parquet")


def test_bad_external_files_name_file_row_and_problem(manifest, tmp_path):
    radiograph = manifest[manifest["kind"] == "radiograph"].iloc[0]
    volume = manifest[manifest["kind"] == "volume"].iloc[0]
    w = int(radiograph["shape"][0])
    good = f"{radiograph['image_id']},1,1,,10,10,,50"
    rows = [
        "image_id,x0,y0,z0,x1,y1,z1,score",
        good,
        "I0000000000000000,1,1,,10,10,,50",
        f"{radiograph['image_id']},1,1,,{w + 5},10,,50",
        f"{radiograph['image_id']},10,1,,5,10,,50",
        f"{radiograph['image_id']},1,1,,10,10,,150",
        f"{volume['image_id']},1,1,,10,10,,50",
        f"{radiograph['image_id']},1,abc,,10,10,,50",
    ]
    path = tmp_path / "boxes.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(BoxFileError) as info:
        load_external_boxes(path, manifest)
    message = str(info.value)
    assert "6 problem(s)" in message
    assert f"{path}: row 3: unknown image_id 'I0000000000000000'" in message
    assert f"{path}: row 4: box outside the image: x [1, {w + 5}] not within [0, {w}]" in message
    assert f"{path}: row 5: negative or empty size: x1 (5) must exceed x0 (10)" in message
    assert f"{path}: row 6: score 150 outside the 0-100 range" in message
    assert f"{path}: row 7: z0 and z1 are required for a 3D image" in message
    assert f"{path}: row 8: y0='abc' is not a number" in message

    as_json = tmp_path / "boxes.json"
    as_json.write_text(
        json.dumps(
            {
                "boxes": [
                    {
                        "image_id": radiograph["image_id"],
                        "x0": 1,
                        "y0": 1,
                        "x1": 10,
                        "y1": 10,
                        "score": -1,
                    }
                ]
            }
        )
    )
    with pytest.raises(BoxFileError, match=r"boxes.json: row 1: score -1 outside the 0-100 range"):
        load_external_boxes(as_json, manifest)
    path.write_text("\n".join(rows[:2]) + "\n")
    assert len(load_external_boxes(path, manifest)) == 1
