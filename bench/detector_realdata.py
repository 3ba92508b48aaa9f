"""Benchmark: the radiograph detector on real fracture radiographs (issue 14's yardstick).

Data: ``../shared/realdata/fracture_train`` (Roboflow's bone-fracture set: JPEGs with YOLO
boxes; the patient is the file name before ``.rf.``, as every augmented copy of one source
radiograph shares it). The images with boxes of ``--patients`` patients go through the
product's own ingest and resample (``assumed_radiograph_spacing_mm`` 0.4, the pipeline's
radiograph spacing, so nothing is resampled) and a keyed 80/20 patient split; then each
detector configuration trains with ``train_detector``'s code in its own process (for its
peak memory) and is measured on the validation patients: lesion recall at the patch
stage's thresholds (score > 10, IoU > 0.5), the detector's own AUFROC and LUNA16 score
(evaluate's FROC code, each image its own study), seconds per epoch and peak RSS.

Usage: python bench/detector_realdata.py [--patients 150] [--epochs 30] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "realdata" / "fracture_train"

# The default (issue 14's pre-trained detector); the variants below change one thing.
LITE0_AUTO = {
    "backbone": "efficientnet_lite0",
    "backbone_init": "imagenet",
    "base_anchor_shapes": "auto",
}

CONFIGS = {
    # What the product shipped before issue 14: ResNet-10 from scratch, fixed anchors,
    # flips only, no early stopping.
    "resnet10_scratch_fixed": {
        "backbone": "resnet",
        "backbone_init": "scratch",
        "base_anchor_shapes": [[16, 16], [24, 12], [12, 24]],
        "returned_layers": [2, 3],
        "augment": {},
        "early_stopping_patience": 0,
    },
    "resnet10_scratch_auto": {
        "backbone": "resnet",
        "backbone_init": "scratch",
        "base_anchor_shapes": "auto",
    },
    "lite0_imagenet_auto": LITE0_AUTO,
    # The default with a GIoU box loss: it optimises the overlap the IoU > 0.5 rule scores.
    "lite0_imagenet_auto_giou": {
        **LITE0_AUTO,
        "box_regression_loss": "giou",
    },
    # The default with the backbone's batch norm frozen: a batch holds 8 crops.
    "lite0_imagenet_auto_frozen_bn": {
        **LITE0_AUTO,
        "frozen_batch_norm": True,
    },
    # A wider and deeper pre-trained backbone, also shipped offline (EfficientNet-Lite1).
    "lite1_imagenet_auto": {**LITE0_AUTO, "backbone": "efficientnet_lite1"},
    # The default with the pre-trained backbone fine-tuned at a tenth of the learning rate
    # of the new feature pyramid and heads.
    "lite0_imagenet_auto_backbone_lr": {
        **LITE0_AUTO,
        "backbone_learning_rate_factor": 0.1,
    },
    # The crop planned too (256 px on this data), one crop per image: the pixels per epoch
    # of the default's four 128-px crops, so the same CPU budget.
    "lite0_imagenet_auto_crop": {
        **LITE0_AUTO,
        "patch_size": "auto",
        "crops_per_image": 1,
    },
}


def build_raw(raw: Path, patients: int, seed: int) -> dict[str, int]:
    """The images with boxes of ``patients`` patients drawn with ``seed``, in the input
    layout (the example projects' own conversion: medtailor.examples.datasets)."""
    from medtailor.examples.datasets import fracture_patients, fracture_raw

    names = sorted(fracture_patients(DATA))
    chosen = sorted(np.random.default_rng(seed).choice(names, min(patients, len(names)), False))
    return fracture_raw(DATA, raw, patients=[str(name) for name in chosen])


def prepare(out: Path, patients: int, epochs: int) -> dict:
    from medtailor.ingest import run_ingest
    from medtailor.resample import run_resample
    from medtailor.split import assign_splits
    from medtailor.tables import read_manifest

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["assumed_radiograph_spacing_mm"] = 0.4
    params["detector"]["radiograph"].update({"epochs": epochs, "validate_every": 5})
    counts = build_raw(out / "raw", patients, int(params["seed"]))
    run_ingest(out / "raw", out / "ingest", params)
    run_resample(out / "ingest", out / "resample", params)
    manifest = read_manifest(out / "resample" / "manifest.parquet")
    split = assign_splits(
        manifest[["patient_id"]].drop_duplicates(), [0.8, 0.2, 0.0], "bench-fracture"
    )
    split.to_csv(out / "split.csv", index=False)
    counts["train_images"] = int(
        manifest["patient_id"].map(split.set_index("patient_id")["split"]).eq("train").sum()
    )
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return counts


def validation_froc(detector, val, cfg: dict, params: dict) -> dict:
    """Recall at the patch stage's thresholds and the detector's own FROC on ``val``."""
    import torch
    from monai.data.box_utils import box_iou

    from medtailor.detect.inference import lesion_recall, predict_boxes
    from medtailor.evaluate.froc import aufroc, build_froc_data, froc_curve, luna16_score

    froc_cfg = params["evaluate"]["froc"]
    rows, lesions = [], []
    predictions = []
    for item in val:
        boxes, scores = predict_boxes(detector, item.image, tuple(cfg["patch_size"]))
        predictions.append((boxes, scores))
        ids = [f"{item.image_id}-{k}" for k in range(len(item.boxes))]
        lesions += [{"lesion_id": i, "study_id": item.image_id} for i in ids]
        iou = (
            box_iou(torch.as_tensor(boxes, dtype=torch.float64), torch.as_tensor(item.boxes))
            .numpy()
            .reshape(len(boxes), len(item.boxes))
        )
        for k, score in enumerate(scores):
            best = iou[k].max() if len(item.boxes) else 0.0
            rows.append(
                {
                    "score": float(score),
                    "study_id": item.image_id,
                    "false_positive": bool(best < float(froc_cfg["false_positive_iou"])),
                    "hits": [ids[j] for j in np.flatnonzero(iou[k] > float(froc_cfg["hit_iou"]))],
                }
            )
    found, total = lesion_recall(
        [item.boxes for item in val],
        predictions,
        float(params["patches"]["min_score"]),
        float(params["patches"]["positive_iou"]),
    )
    images = pd.DataFrame(
        {"image_id": [i.image_id for i in val], "study_id": [i.image_id for i in val]}
    )
    data = build_froc_data(
        pd.DataFrame(rows, columns=["score", "study_id", "false_positive", "hits"]),
        pd.DataFrame(lesions, columns=["lesion_id", "study_id"]),
        images,
    )
    fppi, recall = froc_curve(data)
    low, high = (float(v) for v in froc_cfg["aufroc_fppi"])
    return {
        "val_lesions": total,
        "val_recall": found / total if total else float("nan"),
        "val_aufroc": aufroc(fppi, recall, low, high),
        "val_luna16": luna16_score(fppi, recall),
        "candidates_per_image": len(rows) / max(len(val), 1),
    }


def run_config(out: Path, name: str) -> dict:
    """One configuration, trained and measured (run in its own process)."""
    import torch

    from medtailor.detect.data import load_detection_images
    from medtailor.detect.model import build_detector
    from medtailor.detect.training import detector_file, load_checkpoint, train_kind
    from medtailor.split import manifest_with_split

    params = yaml.safe_load((out / "params.yaml").read_text())
    params["detector"]["radiograph"].update(CONFIGS[name])
    torch.set_num_threads(2)
    manifest = manifest_with_split(out / "resample", out / "split.csv")
    intensity = params["detector"]["radiograph"]["intensity"]
    train = load_detection_images(
        out / "resample", manifest[manifest["split"] == "train"], intensity
    )
    val = load_detection_images(out / "resample", manifest[manifest["split"] == "val"], intensity)
    folder = out / name
    started = time.perf_counter()
    history = train_kind("radiograph", train, val, params, folder, lambda m, s: None)
    seconds = time.perf_counter() - started
    checkpoint = load_checkpoint(detector_file(folder, "radiograph"))
    detector = build_detector(2, checkpoint["config"], params["detector"], pretrained=False)
    detector.load_state_dict(checkpoint["state_dict"])
    measured = validation_froc(detector.eval(), val, checkpoint["config"], params)
    return {
        "config": name,
        **measured,
        "best_epoch": checkpoint["epoch"],
        "recall_during_training": history["radiograph_best_val_recall"],
        "epochs_run": history["radiograph_epochs_run"],
        "seconds_per_epoch": round(seconds / history["radiograph_epochs_run"], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "anchors": checkpoint["config"]["base_anchor_shapes"],
        "patch_size": checkpoint["config"]["patch_size"],
        "returned_layers": checkpoint["config"]["returned_layers"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "detector_realdata")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--run-config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_config:
        print(json.dumps(run_config(args.out, args.run_config)))
        return
    if not DATA.is_dir():
        # Users do not have ../shared: `make bench` goes on with the other benchmarks.
        print(f"{DATA}: the real fracture radiographs are not here; skipped")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    counts = prepare(args.out, args.patients, args.epochs)
    print(json.dumps(counts))
    results = []
    for name in args.configs:
        done = subprocess.run(
            [sys.executable, __file__, "--out", str(args.out), "--run-config", name],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    summary = {"data": counts, "epochs": args.epochs, "results": results}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(pd.DataFrame(results).drop(columns=["anchors"]).to_string(index=False))


if __name__ == "__main__":
    main()
