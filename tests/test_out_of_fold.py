"""Out-of-fold detection: each training image is scored by a detector that never saw its
patient; validation and test images by the detector trained on the whole training split."""

from __future__ import annotations

import copy

import pandas as pd

from medtailor.split import run_split

from .conftest import small


def test_fold_detectors_never_train_on_the_patients_they_score(
    resampled, repo_params, tmp_path, monkeypatch
):
    import medtailor.detect.training as training
    from medtailor.detect import detector_of_images
    from medtailor.tables import read_manifest

    params = copy.deepcopy(small(repo_params))
    params["detector"]["train_folds"] = 2
    resample_dir = resampled[0]
    split_csv = tmp_path / "split.csv"
    run_split(resample_dir, split_csv, params)
    calls = []

    def record(kind, train, val, params, out_dir, sink, fold=None):
        calls.append((kind, fold, {item.image_id for item in train}))
        training.detector_file(out_dir, kind, fold).write_bytes(b"")
        return {}

    monkeypatch.setattr(training, "train_kind", record)
    summary = training.run_train_detector(resample_dir, split_csv, tmp_path / "det", params)
    assert summary["train_folds"] == 2

    manifest = read_manifest(resample_dir / "manifest.parquet").merge(
        pd.read_csv(split_csv, dtype={"patient_id": str})[["patient_id", "split"]]
    )
    patient_of = manifest.set_index("image_id")["patient_id"]
    folds = pd.read_csv(tmp_path / "det" / "folds.csv", dtype={"patient_id": str})
    fold_of = folds.set_index("patient_id")["fold"]
    assert set(fold_of.index) == set(manifest.loc[manifest["split"] == "train", "patient_id"])
    for kind, fold, images in calls:
        kind_train = set(
            manifest[(manifest["kind"] == kind) & (manifest["split"] == "train")]["image_id"]
        )
        if fold is None:
            assert images == kind_train
        else:
            held_out = {i for i in kind_train if fold_of[patient_of[i]] == fold}
            assert held_out and not images & held_out and images == kind_train - held_out
    assert {fold for _, fold, _ in calls} == {None, 0, 1}

    which = detector_of_images(manifest, tmp_path / "det")
    for row in manifest.itertuples():
        expected = fold_of[row.patient_id] if row.split == "train" else -1
        assert which[row.image_id] == expected
