"""Benchmarks of the patch stage.

1. IoU labelling throughput: 1,000,000 candidates against 10,000 ground-truth boxes
   spread over 10,000 images (``label_candidates``, the stage's own code path).
2. Patch-store reads: random batches from a memory-mapped store, against what one
   training step consumes (a timm EfficientNet-B0 forward/backward on the same batch).
3. Memory while reading stores of 50,000 and 500,000 patches (separate processes):
   anonymous memory (RssAnon) must not grow with the store; the file-backed pages a
   reader touches (RssFile) are page cache the kernel reclaims.
Usage: python bench/patches_bench.py [--out bench/results/patches.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PATCH = (64, 64)
BATCH = 128


def labelling_throughput() -> dict:
    from medtailor.patches import label_candidates

    rng = np.random.default_rng(0)
    n_images, n_candidates = 10_000, 1_000_000
    image_ids = np.array([f"I{i:07d}" for i in range(n_images)])
    manifest = pd.DataFrame(
        {
            "image_id": image_ids,
            "study_id": "S",
            "patient_id": [f"P{i // 4}" for i in range(n_images)],
            "split": rng.choice(["train", "val", "test"], n_images),
            "ndim": 2,
            "shape": [[512, 512]] * n_images,
        }
    )
    low = rng.uniform(0, 480, (n_images, 2))
    truths = pd.DataFrame(
        {
            "image_id": image_ids,
            "box_id": [f"{i}-b1" for i in image_ids],
            "x0": low[:, 0],
            "y0": low[:, 1],
            "x1": low[:, 0] + 30,
            "y1": low[:, 1] + 30,
            "z0": np.nan,
            "z1": np.nan,
        }
    )
    owner = rng.integers(0, n_images, n_candidates)
    centre = low[owner] + rng.normal(15, 20, (n_candidates, 2))
    size = rng.uniform(10, 50, (n_candidates, 2))
    candidates = pd.DataFrame(
        {
            "candidate_id": np.arange(n_candidates).astype(str),
            "image_id": image_ids[owner],
            "kind": "radiograph",
            "x0": centre[:, 0] - size[:, 0] / 2,
            "y0": centre[:, 1] - size[:, 1] / 2,
            "z0": np.nan,
            "x1": centre[:, 0] + size[:, 0] / 2,
            "y1": centre[:, 1] + size[:, 1] / 2,
            "z1": np.nan,
            "score": rng.uniform(10.5, 100, n_candidates),
        }
    )
    cfg = {"min_score": 10.0, "positive_iou": 0.5, "negative_iou": 0.2}
    started = time.perf_counter()
    index = label_candidates(manifest, candidates, truths, cfg)
    seconds = time.perf_counter() - started
    return {
        "candidates": n_candidates,
        "truth_boxes": len(truths),
        "images": n_images,
        "seconds": round(seconds, 2),
        "candidates_per_second": round(n_candidates / seconds),
        "labels": index["label"].value_counts().to_dict(),
    }


def make_store(root: Path, n: int) -> Path:
    path = root / f"radiograph_train_{n}.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, *PATCH))
    chunk = np.random.default_rng(0).random((10_000, *PATCH)).astype(np.float16)
    for start in range(0, n, len(chunk)):
        array[start : start + len(chunk)] = chunk[: n - start]
    array.flush()
    del array
    return path


def memory_status() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return fields


def read_store(path: Path, batches: int) -> dict:
    """Random batches from the store, as a training loader reads them."""
    array = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(1)
    peak_anon = peak_file = 0
    started = time.perf_counter()
    for _ in range(batches):
        rows = np.sort(rng.choice(len(array), BATCH, replace=False))
        batch = np.asarray(array[rows], dtype=np.float32)
        assert batch.shape == (BATCH, *PATCH)
        status = memory_status()
        peak_anon, peak_file = max(peak_anon, status["RssAnon"]), max(peak_file, status["RssFile"])
    seconds = time.perf_counter() - started
    return {
        "patches": len(array),
        "store_mb": round(path.stat().st_size / 2**20),
        "patches_per_second": round(batches * BATCH / seconds),
        "peak_rss_anon_mb": peak_anon,
        "peak_rss_file_mb": peak_file,
    }


def training_step_rate() -> dict:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=2, in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = torch.rand(BATCH, 1, *PATCH), torch.randint(0, 2, (BATCH,))
    for step in range(3):
        if step == 1:
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = (time.perf_counter() - started) / 2
    return {
        "model": "efficientnet_b0",
        "batch": BATCH,
        "seconds_per_step": round(seconds, 3),
        "patches_per_second": round(BATCH / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/patches.json"))
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_store(args.read, batches=300)))
        return
    results = {"labelling": labelling_throughput()}
    print(results["labelling"], flush=True)
    results["training_step"] = training_step_rate()
    print(results["training_step"], flush=True)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        results["store_reads"] = []
        for n in (50_000, 500_000):
            path = make_store(Path(tmp), n)
            done = subprocess.run(
                [sys.executable, __file__, "--read", str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            results["store_reads"].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(results["store_reads"][-1], flush=True)
            path.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
