"""The study registry: a study is one decorated expansion and one analysis, like a timm
model is one decorated function. ``@register_study("zoo", analyse=...)`` on a function
mapping the study's params block to ``{name: varied entry keys}``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Expander = Callable[[dict[str, Any]], dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class StudyRun:
    """What a study's analysis reads, and the report folder it writes."""

    folders: dict[str, Path]  # configuration name -> its trained folder
    store_dir: Path  # the patch store the configurations were trained and scored on
    out_dir: Path  # the study's report folder
    params: dict[str, Any]
    # Configurations left out for want of weights: name -> entry with "missing".
    left_out: dict[str, dict[str, Any]]

    @property
    def cfg(self) -> dict[str, Any]:
        """The evaluation settings (replicates, confidence level, operating point)."""
        return self.params["evaluate"]

    @property
    def seed(self) -> int:
        return int(self.params["seed"])

    def scored(self) -> dict[str, Any]:
        """Every trained configuration's predictions, checkpoint facts and test AUC."""
        from medtailor.study.analysis import score_configurations

        return score_configurations(self.folders, self.store_dir, self.params)


# A study's analysis: its inputs -> the flat metrics of its report.
Analyser = Callable[[StudyRun], dict[str, Any]]


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
