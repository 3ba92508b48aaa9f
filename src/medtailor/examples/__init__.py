"""Example projects on public data: one per study the product supports (docs/reproductions.md).

``medtailor init <folder> --example <name> --source <dataset folder>`` turns the public
dataset into the product's input layout (``<folder>/raw``: the images, linked, with the
``annotations/`` tables a user would write) and writes the example's params.yaml: the
task template's blocks with the example's settings at its CPU scale (``--scale study``:
the study's own scale, for GPUs). Each example is one YAML file here naming its task, the
study's claim, its dataset and both scales.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# Dataset -> its conversion in medtailor.examples.datasets (imported when used: the CLI
# lists the examples at start-up and need not load pandas for it).
PREPARE = {"fracture_train": "fracture_raw", "busi": "busi_raw", "lidc_nodules": "lidc_raw"}
SCALES = ("cpu", "study")


def example_names() -> list[str]:
    folder = resources.files(__package__)
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _example_file(name: str) -> dict[str, Any]:
    path = resources.files(__package__) / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown example {name!r}: choose one of {', '.join(example_names())}")
    return yaml.safe_load(path.read_text())


def variant_of(name: str) -> str | None:
    """The example a variant (``base: <example>``) builds on, None for a whole example."""
    return _example_file(name).get("base")


def load_example(name: str) -> dict[str, Any]:
    """The example's YAML; one with ``base: <example>`` is that example with its own keys
    over it (a variant: the same study on another labelling of the same data)."""
    example = _example_file(name)
    base = example.pop("base", None)
    return deep_merge(load_example(base), example) if base else example


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s values; nested mappings merge key by key (a mapping
    whose value is None removes the key)."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def replaced(params: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """``params`` without the dotted ``keys`` the example sets whole (label maps' classes,
    named models: merging them with the template's would keep the template's entries)."""
    params = copy.deepcopy(params)
    for key in keys:
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return params


def example_params(params: dict[str, Any], example: dict[str, Any], scale: str) -> dict[str, Any]:
    """The task template's ``params`` with the example's settings at ``scale``."""
    if scale not in SCALES:
        raise ValueError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}")
    merged = deep_merge(replaced(params, example.get("replace", [])), example["cpu"])
    return deep_merge(merged, example.get("study_scale") or {}) if scale == "study" else merged


def prepare_raw(example: dict[str, Any], source: Path, raw: Path, limit: int | None) -> dict:
    """The example's dataset at ``source`` in the product's input layout at ``raw``."""
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source}: no such folder; give --source the {example['dataset']} folder"
        )
    from medtailor.examples import datasets

    prepare: Callable[..., dict[str, int]] = getattr(datasets, PREPARE[example["dataset"]])
    return prepare(source, raw, limit, **example.get("prepare", {}))


def header(name: str, example: dict[str, Any], scale: str) -> str:
    """The comment that opens the example's params.yaml: the study, its claim, the scale."""
    lines = [
        f"Example {name}: {example['reference']}",
        f"Claim: {example['claim']}",
        f"Scale: {scale}. {example['scales'][scale][:1].upper()}{example['scales'][scale][1:]}",
        "docs/reproductions.md holds what this example measured.",
    ]
    return "".join(f"# {line}\n" for line in lines)
