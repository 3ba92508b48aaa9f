"""Benchmark: the C2FNAS networks at the study's patch size, and one coarse candidate.

Measures, on this machine (a GPU when present, bf16 autocast and channels-last-3d as the
train_seg loop uses there; else the CPU):
- per-iteration time (forward + DiceCE + backward + SGD step, `--batch` patches of
  `--patch`^3, 1 channel, 3 classes) and peak memory of a final network (filters 32, the
  strict-U topology the study found most often: down early, up late) and of the
  single-path supernet on the same topology (each iteration draws a path);
- parameters and MACs of both at one patch;
- the wall time of one coarse candidate at the demo's settings (params.yaml
  search_seg.recipe over train_seg) on the synthetic volumes, and the study's candidate
  projected from the per-iteration time (`--iterations-per-candidate`).
Usage: python bench/search_seg_bench.py [--patch 96] [--batch 2] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from medtailor.complexity import complexity
from medtailor.search_seg.space import OPERATIONS, sample_path
from medtailor.train_seg.c2fnas import C2FNet

TOPOLOGY = [1, 2, 3, 3, 3, 3, 3, 3, 3, 2, 1, 0]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def iteration_cost(
    model: torch.nn.Module, patch: int, batch: int, steps: int, device: torch.device
) -> dict[str, float]:
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last_3d)
        torch.cuda.reset_peak_memory_stats()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=4e-5)
    criterion = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    rng = np.random.default_rng(0)
    images = torch.randn(batch, 1, patch, patch, patch, device=device)
    labels = torch.randint(0, 3, (batch, 1, patch, patch, patch), device=device)
    before = peak_rss_mb()
    times = []
    for _ in range(steps + 1):  # the first step warms up
        if len(model.choices[0]) > 1:
            model.set_path(sample_path(model.choices, rng))
        started = time.perf_counter()
        with autocast:
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    return {
        "seconds_per_iteration": float(np.median(times[1:])),
        "peak_memory_mb": float(peak),
        "rss_growth_mb": float(peak_rss_mb() - before),
    }


def coarse_candidate_seconds(repo: Path) -> dict[str, float]:
    """One coarse candidate of the demo's settings, on freshly made synthetic volumes."""
    from demo_volumes import prepare_demo_volumes

    from medtailor.config import load_params
    from medtailor.search_seg import candidate_entry, train_topology

    params = load_params(repo / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        resample_dir, split_csv = prepare_demo_volumes(params, root)
        entry = candidate_entry(params, TOPOLOGY, "3d", "recipe")
        started = time.perf_counter()
        result = train_topology("bench", entry, resample_dir, split_csv, root / "state", 0)
        return {
            "seconds": time.perf_counter() - started,
            "epochs": entry["epochs"],
            "patch": entry["patch_size"][0],
            "filters": entry["filters"],
            "val_dice": result["score"],
        }


def measure_network(
    name: str, filters: int, patch: int, batch: int, steps: int
) -> dict[str, float]:
    """Counts and iteration cost of one network; run in its own process so that the peak
    resident memory on CPU belongs to this network alone."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    operations = ["3d"] * 12 if name == "final" else [OPERATIONS] * 12
    model = C2FNet(TOPOLOGY, operations, 1, 3, filters=filters)
    if name == "supernet":
        model.set_path(["3d"] * 12)  # MACs of one path: every path costs the same order
    counts = complexity(model.to("meta"), (1, patch, patch, patch))
    model = C2FNet(TOPOLOGY, operations, 1, 3, filters=filters)
    return {**counts, **iteration_cost(model, patch, batch, steps, device)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--iterations-per-candidate", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, object] = {"device": str(device), "threads": torch.get_num_threads()}
    for name in ("final", "supernet"):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            report[name] = pool.apply(
                measure_network, (name, args.filters, args.patch, args.batch, args.steps)
            )
        print(name, json.dumps(report[name]), flush=True)
    final = report["final"]["seconds_per_iteration"]  # type: ignore[index]
    report["study_candidate_hours_projected"] = final * args.iterations_per_candidate / 3600
    report["demo_coarse_candidate"] = coarse_candidate_seconds(Path(__file__).parents[1])
    print(json.dumps(report, indent=2))
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_seg_bench.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
