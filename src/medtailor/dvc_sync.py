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
    Snakemake's eyes; returns their names. Does nothing outside a DVC project.

    dvc.yaml is first rewritten from params.yaml when the stages it should hold changed
    (a search disabled since ``medtailor init`` wrote it), so it follows params.yaml by
    itself. This is bookkeeping after a successful run: a stage that cannot be recorded,
    or any other failure here, is a warning in the log, never a failed run."""
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return []
    try:
        return _record(root)
    except Exception as exc:  # the run itself succeeded: say what was not recorded
        log.warning("could not record the run in dvc.lock (dvc repro will rerun it): %s", exc)
        return []


def refresh_dvc_yaml(root: Path) -> bool:
    """Rewrite ``root``'s dvc.yaml when params.yaml now calls for other stages; True when
    it changed."""
    from medtailor.workflow.dvc_stages import source_root, write_dvc_yaml

    path = root / "dvc.yaml"
    before = path.read_text()
    write_dvc_yaml(path, source_root(root))
    changed = path.read_text() != before
    if changed:
        log.info("dvc.yaml rewritten from params.yaml (its stages had changed)")
    return changed


def _record(root: Path) -> list[str]:
    from dvc.repo import Repo

    refresh_dvc_yaml(root)
    outputs = snakemake_outputs(root)
    committed = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            outs = [out.def_path.rstrip("/") for out in stage.outs]
            if not outs or not all(is_current(out, outputs) for out in outs):
                continue
            try:
                repo.commit(stage.addressing, force=True, relink=False)
            except Exception as exc:  # one stage's record must not lose the others'
                log.warning("dvc.lock: stage %s not recorded: %s", stage.addressing, exc)
                continue
            committed.append(stage.addressing)
    log.info("recorded %d Snakemake stage(s) in dvc.lock", len(committed))
    return committed
