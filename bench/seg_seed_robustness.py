"""Benchmark: does the demo's searched C2FNAS network learn the lesion class, seed after seed?

Trains the network the demo's search selected (topology and operations below) under the
demo's final recipe (params.yaml: train_seg with search_seg.final_recipe, filters
search_seg.filters) on the synthetic volumes, once per seed and initialisation:
- ``he``: the shipped initialisation (He, as nnU-Net and DynUNet start);
- ``pytorch``: PyTorch's default convolution initialisation, what C2FNet used before.
Records validation lesion and bone Dice at every validation and whether the run learned
the lesions (final validation lesion Dice above 0.3, the slow baseline test's bar).
About 85 s per run on 2 CPU cores.
Usage: python bench/seg_seed_robustness.py [--seeds 0 1 2] [--inits he pytorch] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from demo_volumes import prepare_demo_volumes
from torch import nn

import medtailor.train_seg.models as seg_models
from medtailor.config import load_params
from medtailor.search_seg import candidate_entry, train_topology
from medtailor.train_seg.c2fnas import C2FNet

# What `make demo` selected with seed 20261121 before C2FNet started from He initialisation
# (data/search_seg_fine/selection.json then): the network that exposed the problem.
LEVELS = [1, 1, 1, 2, 3, 3, 2, 1, 1, 1, 1, 0]
OPERATIONS = ["p3d", "2d", "p3d", "3d", "3d", "p3d", "p3d", "2d", "2d", "p3d", "2d", "p3d"]
LEARNED = 0.3


class PyTorchInitC2FNet(C2FNet):
    """C2FNet as it was built before He initialisation: PyTorch's default convolution
    initialisation, drawn from the same random state, so a seed gives the old weights."""

    def __init__(self, *args, **kwargs) -> None:
        state = torch.get_rng_state()
        super().__init__(*args, **kwargs)
        torch.set_rng_state(state)
        for module in self.modules():  # registration order is construction order here
            if isinstance(module, nn.Conv3d):
                module.reset_parameters()


def train_one(params: dict, volumes: tuple[Path, Path], root: Path, init: str, seed: int) -> dict:
    seg_models.C2FNet = PyTorchInitC2FNet if init == "pytorch" else C2FNet
    entry = candidate_entry(params, LEVELS, OPERATIONS, "final_recipe")
    name = f"{init}_seed{seed}"
    started = time.perf_counter()
    result = train_topology(name, entry, *volumes, root, seed)
    history = pd.read_csv(root / name / "model" / "history.csv")
    validated = history[history["val_dice_mean"].notna()]
    epochs, lesion, bone = (validated[c] for c in ("epoch", "val_dice_lesion", "val_dice_bone"))
    final_lesion = float(lesion.iloc[-1])
    return {
        "init": init,
        "seed": seed,
        "val_dice_lesion": {
            int(e): round(float(d), 4) for e, d in zip(epochs, lesion, strict=True)
        },
        "val_dice_bone": {int(e): round(float(d), 4) for e, d in zip(epochs, bone, strict=True)},
        "learned_lesions": final_lesion > LEARNED,
        "score": result["score"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    repo = Path(__file__).parents[1]
    params = load_params(repo / "params.yaml")
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[params["seed"], *range(8)])
    parser.add_argument("--inits", nargs="+", default=["he", "pytorch"])
    parser.add_argument("--out", type=Path, default=repo / "bench" / "results")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        volumes = prepare_demo_volumes(params, root)
        for init in args.inits:
            for seed in args.seeds:
                runs.append(train_one(params, volumes, root, init, seed))
                print(json.dumps(runs[-1], default=str), flush=True)
    summary = {
        init: f"{sum(r['learned_lesions'] for r in runs if r['init'] == init)} of "
        f"{sum(r['init'] == init for r in runs)} seeds learned the lesions"
        for init in args.inits
    }
    report = {"levels": LEVELS, "operations": OPERATIONS, "summary": summary, "runs": runs}
    print(json.dumps(summary, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seg_seed_robustness.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n"
    )


if __name__ == "__main__":
    main()
