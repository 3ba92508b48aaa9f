"""The study registry: a study is one decorated expansion and one analysis, like a timm
model is one decorated function. ``@register_study("zoo", analyse=...)`` on a function
mapping the study's params block to ``{name: varied entry keys}``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Expander = Callable[[dict[str, Any]], dict[str, dict[str, Any]]]
# (trained folders, patch store, report folder, params, configurations left out for want
# of weights: name -> entry with "missing") -> flat metrics
Analyser = Callable[
    [dict[str, Path], Path, Path, dict[str, Any], dict[str, dict[str, Any]]], dict[str, Any]
]


@dataclass(frozen=True)
class Study:
    expand: Expander
    analyse: Analyser


STUDIES: dict[str, Study] = {}


def register_study(name: str, analyse: Analyser) -> Callable[[Expander], Expander]:
    def decorate(expand: Expander) -> Expander:
        STUDIES[name] = Study(expand, analyse)
        return expand

    return decorate


def study_expander(name: str) -> Expander:
    from medtailor.study import grid, transfusion, zoo  # noqa: F401  (registers the built-in studies)

    if name not in STUDIES:
        raise ValueError(f"no study {name!r}; known: {sorted(STUDIES)}")
    return STUDIES[name].expand
