"""Benchmark: the search's cost outside training, and the study's setting projected.

Measures, on this machine:
- extraction: cutting a candidate's weights from the supernet and building its timm model
  (lite0_elastic from the real Lite0 weights; ofa_mbv3_w12 from a randomly initialised
  supernet of the `ofa` package, the same tensors as the official file);
- ask and tell at the end of a 100-candidate search (the ask replays the whole history);
- one candidate's MLflow child run (params, tags, metrics) in a local SQLite store;
- the time of one SGD step (forward + backward, batch 128 at 224 x 224, 1 channel) of the
  OFA reference subnet, from which a study-sized candidate (5 epochs of `--patches`
  training patches) and the whole search (100 candidates) are projected.
The overhead fraction is (extraction + ask/W + tell/W + MLflow) / (that + training).
Usage: python bench/search_overhead.py [--patches 20000] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from medtailor.search.evolution import SearchPlan, ask_generation
from medtailor.search.spaces import create_space
from medtailor.search.supernet import extract_subnet, lite0_supernet, ofa_to_timm


def timed(function, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def extraction_seconds(space_name: str, supernet, repeat: int = 5) -> float:
    space = create_space(space_name)
    rng = random.Random(0)
    genotypes = [tuple(rng.choice(g.choices) for g in space.genes) for _ in range(repeat)]
    started = time.perf_counter()
    for genotype in genotypes:
        model = space.create_model(genotype, pretrained=False, in_chans=1)
        model.load_state_dict(
            {
                k: v
                for k, v in extract_subnet(space, supernet, genotype, 1).items()
                if not k.startswith("classifier.")
            }
        )
    return (time.perf_counter() - started) / repeat


def ask_tell_seconds(workers: int = 10, budget: int = 100) -> tuple[float, float]:
    """The last generation's ask (replaying 90 candidates) and a tell (JSON write)."""
    space = create_space("ofa_mbv3_w12")
    plan = SearchPlan(budget, workers, 1)
    history: list[dict] = []
    rng = random.Random(1)
    for _ in range(plan.generations - 1):
        history += [
            {**c, "score": rng.random(), "feasible": True}
            for c in ask_generation(space, plan, history)
        ]
    started = time.perf_counter()
    asked = ask_generation(space, plan, history)
    ask = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        Path(tmp, "history.json").write_text(json.dumps(history + asked))
        tell = time.perf_counter() - started
    return ask, tell


def mlflow_seconds() -> float:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with mlflow.start_run(run_name="stage"):
            started = time.perf_counter()
            with mlflow.start_run(run_name="candidate", nested=True):
                mlflow.set_tags({"medtailor.candidate": "k", "medtailor.generation": 9})
                mlflow.log_params({"genotype": "[3, 5]", "generation": 9, "index": 0})
                for epoch in range(5):
                    mlflow.log_metrics({"val_auc": 0.5, "train_loss": 1.0}, step=epoch)
                mlflow.log_metrics({"score": 0.5, "parameters": 1.0, "macs": 1.0})
            return time.perf_counter() - started


def step_seconds(steps: int, batch: int = 128, size: int = 224) -> float:
    space = create_space("ofa_mbv3_w12")
    model = space.create_model(
        space.reference_genotype(), pretrained=False, in_chans=1, num_classes=2
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    images, labels = torch.rand(batch, 1, size, size), torch.randint(0, 2, (batch,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()  # warm-up
    return timed(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=20000, help="training patches per epoch")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    ofa = ofa_to_timm(
        OFAMobileNetV3(
            width_mult=1.2, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]
        ).state_dict()
    )
    lite0 = lite0_supernet()
    results = {
        "extraction_lite0_elastic_s": extraction_seconds("lite0_elastic", lite0),
        "extraction_ofa_mbv3_w12_s": extraction_seconds("ofa_mbv3_w12", ofa),
    }
    ask, tell = ask_tell_seconds()
    results.update(
        {"ask_last_generation_s": ask, "tell_s": tell, "mlflow_child_run_s": mlflow_seconds()}
    )
    step = step_seconds(args.steps)
    steps_per_candidate = 5 * -(-args.patches // 128)
    training = step * steps_per_candidate
    overhead = (
        results["extraction_ofa_mbv3_w12_s"] + (ask + tell) / 10 + results["mlflow_child_run_s"]
    )
    results.update(
        {
            "sgd_step_b128_224px_s": step,
            "training_patches": args.patches,
            "candidate_training_s": training,
            "overhead_fraction": overhead / (overhead + training),
            "search_100_candidates_h": 100 * (training + overhead) / 3600,
        }
    )
    out = Path(__file__).parent / "results" / "search_overhead.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
