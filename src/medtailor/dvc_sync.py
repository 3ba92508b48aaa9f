"""Snakemake's finished work, recorded for DVC: after a successful Snakemake run, every DVC
stage whose outputs Snakemake considers up to date is committed to ``dvc.lock``, so
``dvc status`` and ``dvc repro`` know it and rerun only what a later change touches.

Which outputs are up to date is Snakemake's own verdict (``snakemake --summary``: plan
"no update"), not the mere existence of files: an output left from an older configuration
that this run did not rebuild is never recorded as current.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def snakemake_outputs(root: Path) -> dict[str, bool]:
    """Every output path of the default target's DAG -> whether its Snakemake plan is
    "no update"."""
    snakemake = Path(sys.executable).with_name("snakemake")
    result = subprocess.run(
        [str(snakemake) if snakemake.exists() else "snakemake", "--summary", "--nolock"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    outputs = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) >= 5:
            outputs[fields[0].strip().rstrip("/")] = fields[-1].strip() == "no update"
    return outputs


def is_current(out: str, outputs: dict[str, bool]) -> bool:
    """A DVC output is up to date when Snakemake's output of that path is, or, for a folder
    that Snakemake fills file by file (the search's generations), when every Snakemake
    output inside it is."""
    if out in outputs:
        return outputs[out]
    inside = [current for path, current in outputs.items() if path.startswith(out + "/")]
    return bool(inside) and all(inside)


def record_in_dvc_lock(root: Path = Path()) -> list[str]:
    """Commit (``dvc commit --force``) the DVC stages whose every output is up to date in
    Snakemake's eyes; returns their names. Does nothing outside a DVC project."""
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return []
    from dvc.repo import Repo

    outputs = snakemake_outputs(root)
    committed = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            outs = [out.def_path.rstrip("/") for out in stage.outs]
            if outs and all(is_current(out, outputs) for out in outs):
                repo.commit(stage.addressing, force=True, relink=False)
                committed.append(stage.addressing)
    log.info("recorded %d Snakemake stage(s) in dvc.lock", len(committed))
    return committed
