"""The Snakemake workflow shipped with the package, and ``medtailor init``: a project folder
of your own (params, a Snakefile that uses this workflow as a module, DVC, Slurm profile).

The repository's root is itself such a project (the demo): its Snakefile, params.yaml and
profiles are links to ``project/`` here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(str(resources.files(__package__)))
SNAKEFILE = str(PACKAGE_DIR / "Snakefile")
PROJECT_TEMPLATE = PACKAGE_DIR / "project"
# Template files copied as they are; gitignore becomes .gitignore (a dotfile would be
# skipped by packaging tools).
TEMPLATE_FILES = ("Snakefile", "params.yaml", "profiles/default/config.yaml", "slurm/config.yaml")


class ProjectExistsError(FileExistsError):
    """The target folder already holds a medtailor project."""


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=60)


def _commit(folder: Path, message: str) -> str:
    """Commit everything staged; without a configured git identity, as 'medtailor init'."""
    done = _git(folder, "commit", "-q", "-m", message)
    if done.returncode != 0 and "user.email" in done.stderr + done.stdout:
        done = _git(
            folder,
            "-c",
            "user.name=medtailor init",
            "-c",
            "user.email=medtailor-init@localhost",
            "commit",
            "-q",
            "-m",
            message,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{folder}: git commit failed: {done.stderr.strip()}")
    return _git(folder, "rev-parse", "HEAD").stdout.strip()


def init_project(folder: Path, raw_input: Path | None = None) -> list[str]:
    """Make ``folder`` a medtailor project: params.yaml (the demo's, reading ``raw_input``
    when given), a Snakefile that runs the installed workflow as a module, the local and
    Slurm profiles, dvc.yaml, .gitignore, a git repository and DVC, first commit included.
    Returns what was done, one line per step."""
    from medtailor.workflow.dvc_stages import write_dvc_yaml

    folder = folder.resolve()
    for name in ("params.yaml", "Snakefile", "dvc.yaml"):
        if (folder / name).exists():
            raise ProjectExistsError(f"{folder / name} exists: {folder} is already a project")
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name in TEMPLATE_FILES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_TEMPLATE / name, target)
    if raw_input is not None:  # edit the text, so the comments stay
        text = (folder / "params.yaml").read_text()
        text = re.sub(r"^  input: .*$", f"  input: {raw_input}", text, count=1, flags=re.M)
        (folder / "params.yaml").write_text(text)
    done.append(f"wrote {', '.join(TEMPLATE_FILES)}")
    write_dvc_yaml(folder / "dvc.yaml")
    gitignore = folder / ".gitignore"
    existing = gitignore.read_text() if gitignore.exists() else ""
    gitignore.write_text(existing + (PROJECT_TEMPLATE / "gitignore").read_text())
    done.append("wrote dvc.yaml and .gitignore")
    inside = _git(folder, "rev-parse", "--show-toplevel")
    if inside.returncode != 0:
        _git(folder, "init", "-q")
        done.append("git init")
    if not (folder / ".dvc").is_dir():
        dvc = subprocess.run(
            [shutil.which("dvc") or "dvc", "init", "-q"]
            + (["--subdir"] if inside.returncode == 0 else []),
            cwd=folder,
            capture_output=True,
            text=True,
        )
        if dvc.returncode != 0:
            raise RuntimeError(f"{folder}: dvc init failed: {dvc.stderr.strip()}")
        done.append("dvc init")
    _git(folder, "add", "-A", ".")
    commit = _commit(folder, "medtailor project")
    done.append(f"committed the project ({commit[:12]})")
    return done
