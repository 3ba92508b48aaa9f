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


# What `medtailor init --task` writes: the demo (every stage, on the synthetic set) or the
# blocks of one task, with the demo's extras (search, studies, the third model) off.
TASKS = ("demo", "detection", "whole-image", "segmentation")
# Top-level blocks each task leaves out of params.yaml (synth too when --input is given).
TASK_DROPS = {
    "demo": (),
    "detection": ("train_seg", "seg_models", "search_seg", "studies"),
    "whole-image": ("detector", "search", "train_seg", "seg_models", "search_seg", "studies"),
    "segmentation": ("detector", "patches", "train", "models", "search", "studies"),
}
# Keys inside a block that a task leaves out.
TASK_NESTED_DROPS = {
    "detection": {"models": ("resnet18_scratch",)},
    "whole-image": {
        "models": ("resnet18_scratch",),
        "patches": ("min_score", "positive_iou", "negative_iou", "context", "padding", "square"),
        "evaluate": ("froc",),
    },
    "segmentation": {
        "evaluate": ("froc", "operating_point", "gradcam_per_outcome", "cam_method", "evidence"),
    },
}
WHOLE_IMAGE_PATCHES = """  source: whole_image
  # Each image is scaled to [0, 1] between its own 1st and 99th percentiles (radiographs,
  # ultrasound, photographs); CT volumes would use a window: {mode: window, range: [lo, hi]}.
  intensity:
    radiograph: {mode: percentile, range: [1.0, 99.0]}
"""


class ProjectExistsError(FileExistsError):
    """The target folder already holds a medtailor project."""


def top_level_sections(text: str) -> list[tuple[str | None, list[str]]]:
    """params.yaml text as (top-level key, its lines with the comments just above it); the
    file's header comments come first with key None."""
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    pending: list[str] = []
    for line in text.splitlines(keepends=True):
        match = re.match(r"^([A-Za-z_]\w*):", line)
        if match:
            sections.append((match.group(1), [*pending, line]))
            pending = []
        elif line.startswith("#") or not line.strip():
            pending.append(line)
        else:
            sections[-1][1].extend([*pending, line])
            pending = []
    sections[-1][1].extend(pending)
    return sections


def drop_nested(lines: list[str], key: str) -> list[str]:
    """``lines`` of a block without its two-space-indented ``key`` (its value, deeper lines
    and the comments right above it)."""
    kept: list[str] = []
    skipping = False
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if skipping and line.strip() and indent > 2:
            continue
        skipping = False
        if re.match(rf"^  {re.escape(key)}:", line):
            while kept and kept[-1].startswith("  #"):
                kept.pop()
            skipping = True
            continue
        kept.append(line)
    return kept


def task_params_text(text: str, task: str, with_synth: bool) -> str:
    """The demo's params.yaml ``text`` cut to ``task``'s blocks (comments kept)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    drops = set(TASK_DROPS[task]) | (set() if with_synth else {"synth"})
    parts = []
    for key, lines in top_level_sections(text):
        if key in drops:
            continue
        for nested in TASK_NESTED_DROPS.get(task, {}).get(key or "", ()):
            lines = drop_nested(lines, nested)
        block = "".join(lines)
        if task == "whole-image" and key == "patches":
            block = re.sub(r"^  source: .*\n", WHOLE_IMAGE_PATCHES, block, count=1, flags=re.M)
        if task != "demo" and key in ("search", "search_seg"):
            block = re.sub(r"^  enabled: true$", "  enabled: false", block, count=1, flags=re.M)
        parts.append(block)
    return "".join(parts)


def example_params_text(name: str, example: dict, task: str, scale: str) -> str:
    """The example's params.yaml: its settings over ``task``'s template, validated before
    anything is written (raw/ is the dataset in the input layout)."""
    import yaml

    from medtailor.config import validate_params
    from medtailor.examples import example_params, header

    text = (PROJECT_TEMPLATE / "params.yaml").read_text()
    text = re.sub(r"^  input: .*$", "  input: raw", text, count=1, flags=re.M)
    template = yaml.safe_load(task_params_text(text, task, with_synth=False))
    params = example_params(template, example, scale)
    validate_params(params, f"example {name}")
    return header(name, example, scale) + yaml.safe_dump(params, sort_keys=False)


def example_data(folder: Path, name: str, source: Path, scale: str, limit: int | None) -> list[str]:
    """The example's dataset linked into ``folder/raw`` in the input layout."""
    from medtailor.examples import load_example, prepare_raw

    counts = prepare_raw(load_example(name), source.resolve(), folder / "raw", limit)
    what = ", ".join(f"{n} {k}" for k, n in counts.items())
    return [f"example {name} ({scale} scale): {source} linked into raw/ ({what})"]


def external_bundles(folder: Path, trained: Path, params: dict, names: list[str]) -> list[str]:
    """Write the external project's params.yaml and a bundle of each frozen model."""
    import yaml

    from medtailor.config import EXTERNAL_BUNDLES, load_params
    from medtailor.predict.bundle import write_bundle

    header = (
        f"# External validation of {trained.name}'s frozen models (medtailor init --external):\n"
        "# the trained project's settings, ingest.input the cohort, external the record.\n"
    )
    (folder / "params.yaml").write_text(header + yaml.safe_dump(params, sort_keys=False))
    trained_params = load_params(trained / "params.yaml")
    commit = params["external"]["commit"]
    for name in names:
        write_bundle(
            trained / "data" / "models" / name,
            trained_params,
            trained / "data" / "detector",
            folder / EXTERNAL_BUNDLES / name,
            commit,
        )
    return [f"bundled {len(names)} frozen model(s) into {EXTERNAL_BUNDLES}/: {', '.join(names)}"]


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


# What an external-validation project keeps of the trained project's params: the stages
# that ingest, detect and cut patches as training did, the evaluation settings, and the
# models (their names); never the training-only blocks.
EXTERNAL_DROPS = ("synth", "search", "search_seg", "studies", "train_seg", "seg_models")


def external_params(trained: Path, cohort: Path) -> tuple[dict, list[str]]:
    """The params of a project validating ``trained``'s frozen classifiers on ``cohort``,
    and the names of those classifiers."""
    from medtailor.config import load_params, params_hash
    from medtailor.evaluate import trained_folders
    from medtailor.tracking import git_commit

    params = load_params(trained / "params.yaml")
    if params.get("patches", {}).get("source") != "candidates" or (
        params["detector"]["source"] != "builtin"
    ):
        raise ValueError(
            f"{trained}: external validation takes classifiers of the built-in detector's "
            "candidates (patches.source: candidates, detector.source: builtin)"
        )
    names = sorted(trained_folders([trained / "data" / "models"]))
    external = {
        **{key: value for key, value in params.items() if key not in EXTERNAL_DROPS},
        "external": {
            "project": str(trained),
            "commit": git_commit(trained),
            "params_hash": params_hash(params),
            "models": names,
        },
    }
    external["ingest"] = {**params["ingest"], "input": str(cohort)}
    return external, names


def init_project(
    folder: Path,
    raw_input: Path | None = None,
    task: str = "demo",
    external: Path | None = None,
    example: str | None = None,
    source: Path | None = None,
    scale: str = "cpu",
    limit: int | None = None,
) -> list[str]:
    """Make ``folder`` a medtailor project: params.yaml (the demo's, or only ``task``'s
    blocks; reading ``raw_input`` when given), a Snakefile that runs the installed workflow
    as a module, the local and Slurm profiles, dvc.yaml, .gitignore, a git repository and
    DVC, first commit included. Returns what was done, one line per step."""
    from medtailor.config import SYNTH_INPUT
    from medtailor.workflow.dvc_stages import write_dvc_yaml

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if task == "whole-image" and raw_input is None:
        raise ValueError(
            "--task whole-image needs --input: the synthetic demo set has no whole-image "
            "classes (give a folder of images with annotations/classes.csv)"
        )
    if example is not None:
        from medtailor.examples import load_example

        chosen = load_example(example)
        if source is None:
            raise ValueError(
                f"--example {example} needs --source: the {chosen['dataset']} dataset folder"
            )
        task, raw_input = chosen["task"], Path("raw")
        example_text = example_params_text(example, chosen, task, scale)
    if external is not None and raw_input is None:
        raise ValueError("--external needs --input: the labelled cohort to validate on")
    folder = folder.resolve()
    for name in ("params.yaml", "Snakefile", "dvc.yaml"):
        if (folder / name).exists():
            raise ProjectExistsError(f"{folder / name} exists: {folder} is already a project")
    if external is not None:
        params, names = external_params(external.resolve(), raw_input)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name in TEMPLATE_FILES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_TEMPLATE / name, target)
    # Edit the text, so the comments stay.
    text = (folder / "params.yaml").read_text()
    if raw_input is not None:
        text = re.sub(r"^  input: .*$", f"  input: {raw_input}", text, count=1, flags=re.M)
    reads_synth = raw_input is None or str(raw_input) == SYNTH_INPUT
    (folder / "params.yaml").write_text(task_params_text(text, task, reads_synth))
    done.append(f"wrote {', '.join(TEMPLATE_FILES)}")
    if external is not None:
        done += external_bundles(folder, external.resolve(), params, names)
    if example is not None:
        (folder / "params.yaml").write_text(example_text)
        done += example_data(folder, example, source, scale, limit)
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
