"""The ``medtailor`` command: one subcommand per pipeline stage, each one MLflow run.

Snakemake rules and DVC stages call exactly these subcommands; every one of them reads
and validates params.yaml first, logs its params and summary to MLflow, and writes the
summary to ``metrics/<stage>.json`` (DVC metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtailor import __version__
from medtailor.config import ParamsError, load_params
from medtailor.examples import example_names
from medtailor.tracking import Terminated, log_step_metrics
from medtailor.workflow import TASKS

log = logging.getLogger("medtailor")
DATA = Path("data")
METRICS = Path("metrics")
PLOTS = Path("plots")
Result = tuple[dict[str, Any], list[Path]]


def run_synth(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.synth import generate_dataset

    return generate_dataset(params, args.output), []


def run_ingest(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.ingest import run_ingest as ingest

    source = args.input or Path(params["ingest"]["input"])
    return ingest(source, args.output, params), [args.output / "audit.csv"]


def run_resample(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.resample import run_resample as resample

    return resample(args.input, args.output, params), []


def run_split(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.split import run_split as split

    return split(args.input, args.output, params), [args.output]


def run_train_detector(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.detect import run_train_detector as train

    if params["detector"]["source"] == "external":
        args.output.mkdir(parents=True, exist_ok=True)
        log.info("detector.source is external: the built-in detector is not trained")
        return {"skipped": 1}, []

    summary = train(args.input, args.split, args.output, params, log_step_metrics)
    return summary, sorted(args.output.glob("*.pt"))


def run_detector_cv_fold(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.detector_cv import run_detector_cv_fold as cross_validate_fold

    summary = cross_validate_fold(args.input, args.fold, args.output, params, log_step_metrics)
    return summary, []


def run_detector_cv(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.detector_cv import run_detector_cv as cross_validate

    summary = cross_validate(args.input, args.folds, args.output, params)
    return summary, [args.output / "report.md", args.output / "figures" / "detector_recall.png"]


def run_detect(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.detect import run_detect as detect

    source = args.detector
    if source is None:
        external = params["detector"]["source"] == "external"
        source = Path(params["detector"]["external_boxes"]) if external else DATA / "detector"
    return detect(args.input, source, args.output, params), []


def run_patches(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.patches import plot_names
    from medtailor.patches import run_patches as patches

    whole_image = params["patches"]["source"] == "whole_image"
    candidates = None if whole_image else args.candidates
    summary = patches(args.input, args.split, candidates, args.output, params, args.plots)
    return summary, [args.plots / name for name in plot_names(params["patches"])]


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank of a torchrun launch."""
    return int(os.environ.get("RANK", "0")) == 0


def run_train(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.tracking import flatten
    from medtailor.train import model_entry
    from medtailor.train import run_train as train

    output = args.output if args.output != DATA / "models" else DATA / "models" / args.model
    state = args.state or DATA / "train_state" / args.model
    sink = None
    if is_rank_zero():
        import mlflow

        mlflow.set_tag("medtailor.model", args.model)
        mlflow.log_params(flatten(model_entry(params, args.model), "model."))
        sink = log_step_metrics

    summary = train(args.model, args.input, output, state, params, sink)
    artifacts = [output / name for name in ("best.pt", "predictions.parquet", "history.csv")]
    return summary, artifacts


def run_study_train(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.study import configuration_label, study_entry
    from medtailor.study import run_study_train as study_train
    from medtailor.tracking import flatten

    folder = DATA / "studies" / args.study
    output = args.output if args.output != DATA / "studies" else folder / "models" / args.model
    state = args.state or DATA / "study_state" / args.study / args.model
    sink = None
    if is_rank_zero():
        import mlflow

        label = configuration_label(params, args.study, args.model)
        mlflow.set_tags(
            {
                "medtailor.model": args.model,
                "medtailor.study": args.study,
                "mlflow.runName": f"study_train:{args.study}:{label}",
            }
        )
        mlflow.log_params(flatten(study_entry(params, args.study, args.model), "model."))
        sink = log_step_metrics
    summary = study_train(args.study, args.model, args.input, output, state, params, sink)
    return summary, [output / name for name in ("best.pt", "predictions.parquet", "history.csv")]


def run_study(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    import mlflow

    from medtailor.study import run_study as study

    folder = DATA / "studies" / args.study
    output = args.output if args.output != DATA / "studies" else folder / "report"
    models = args.models or folder / "models"
    summary = study(args.study, models, args.input, output, params)
    mlflow.set_tag("medtailor.study", args.study)
    artifacts = [output / name for name in ("report.md", "summary.json", "table.csv")]
    return summary, artifacts + sorted((output / "figures").glob("*.png"))


def run_score(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.score import run_score as score

    return score(args.model, args.input, args.output), [args.output / "predictions.parquet"]


def run_evaluate(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    import mlflow

    if "external" in params:
        from medtailor.config import EXTERNAL_BUNDLES
        from medtailor.evaluate.external import evaluate_external

        summary = evaluate_external(
            args.trained[0],
            Path(EXTERNAL_BUNDLES),
            args.input,
            args.resample,
            args.split,
            args.output,
            params,
        )
        mlflow.set_tag("medtailor.models", ",".join(params["external"]["models"]))
        reports = ["report.md", "summary.json", "roc.csv", "froc.csv", "reliability.csv"]
        return summary, [args.output / name for name in reports] + sorted(
            (args.output / "figures").glob("*.png")
        )

    from medtailor.evaluate import run_evaluate as evaluate
    from medtailor.evaluate import trained_folders

    classified = str(args.input) != "none"  # "none": a project that segments only
    folders = trained_folders(args.trained, args.models) if classified else {}
    names = sorted(folders)
    from medtailor.evaluate.segmentation import segmentation_folders

    search = None if str(args.search_summary) == "none" else args.search_summary
    segmented = None if str(args.segmented) == "none" else segmentation_folders(args.segmented)
    search_seg = None if str(args.search_seg) == "none" else args.search_seg
    summary = evaluate(
        folders,
        args.input if classified else None,
        args.resample,
        args.split,
        args.output,
        params,
        search,
        segmented,
        search_seg,
    )
    log_to_model_runs(summary, names)
    summary["registered_models"] = len(register_trained(folders, args.params))
    artifacts = [
        args.output / "report.md",
        args.output / "summary.json",
        args.output / "roc.csv",
        args.output / "froc.csv",
    ]
    artifacts += sorted((args.output / "figures").glob("*.png"))
    mlflow.set_tag("medtailor.models", ",".join(names))
    return summary, artifacts


def register_trained(folders: dict[str, Path], params_file: Path) -> dict[str, str]:
    """Register each classifier (whole images, or the built-in detector's candidates) as an
    MLflow model (``<project>-<model>``), with
    the bundle ``medtailor predict`` applies. Its params snapshot is the whole params file,
    which the evaluate stage's own view of params does not hold."""
    from medtailor.predict.serving import register_models

    if not folders:
        return {}
    params = load_params(params_file)
    source = params["patches"]["source"]
    servable = source == "whole_image" or params["detector"]["source"] == "builtin"
    if not servable:
        return {}
    return register_models(folders, params, Path.cwd(), DATA / "detector")


def run_search_ask(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.generations import generation_dir
    from medtailor.search import run_ask

    summary = run_ask(args.output, args.generation, params)
    return summary, [generation_dir(args.output, args.generation) / "asked.json"]


def run_search_candidate(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.generations import generation_dir
    from medtailor.search import CandidateScorer, run_candidate

    scorer = CandidateScorer(args.input, args.resample, args.split, params)
    summary = run_candidate(args.output, args.generation, args.index, scorer, args.state, params)
    return summary, [generation_dir(args.output, args.generation) / f"candidate_{args.index}.json"]


def run_search_tell(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.generations import generation_dir
    from medtailor.search import run_tell

    summary = run_tell(args.output, args.generation, params)
    return summary, [generation_dir(args.output, args.generation) / "history.json"]


def run_search(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.search import run_search as search

    summary = search(args.output, args.input, args.resample, args.split, args.state, params)
    return summary, []


def run_search_summary(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.search.final import run_search_summary as summarise

    summary = summarise(args.input, args.output, params)
    figures = [Path(p) for p in summary.pop("figures")]
    return summary, [args.output / "history.csv", args.output / "finalists.json", *figures]


def run_search_final(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    import mlflow

    from medtailor.search import CandidateScorer
    from medtailor.search.final import run_search_final as train_final

    scorer = CandidateScorer(args.patches, args.resample, args.split, params)
    mlflow.set_tag("medtailor.model", args.name)

    state = args.state or DATA / "train_state" / args.name
    summary = train_final(
        args.name, args.input, args.output, scorer, state, params, log_step_metrics
    )
    folder = args.output / args.name
    return summary, [folder / name for name in ("best.pt", "predictions.parquet", "history.csv")]


def log_to_model_runs(summary: dict[str, Any], names: list[str]) -> None:
    """Copy each model's test metrics onto its latest training run."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    experiment = mlflow.get_experiment(mlflow.active_run().info.experiment_id)
    for name in names:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`medtailor.model` = '{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            continue
        for key in ("test_auc", "test_aufroc"):
            value = summary.get(f"{name}_{key}")
            if value is not None:
                client.log_metric(runs[0].info.run_id, f"eval_{key}", float(value))


def run_train_seg(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    import mlflow

    from medtailor.tracking import flatten
    from medtailor.train_seg import run_train_seg as train_seg
    from medtailor.train_seg import seg_entry

    output = args.output if args.output != DATA / "seg_models" else DATA / "seg_models" / args.model
    state = args.state or DATA / "train_seg_state" / args.model
    mlflow.set_tag("medtailor.model", args.model)
    mlflow.log_params(flatten(seg_entry(params, args.model), "model."))

    ingest = None if str(args.ingest) == "none" else args.ingest
    summary = train_seg(
        args.model, args.input, args.split, ingest, output, state, params, log_step_metrics
    )
    artifacts = [output / name for name in ("best.pt", "dice.parquet", "history.csv")]
    return summary, artifacts


def run_search_seg_ask(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.generations import generation_dir
    from medtailor.search_seg import run_coarse_ask

    summary = run_coarse_ask(args.output, args.generation, params)
    return summary, [generation_dir(args.output, args.generation) / "asked.json"]


def run_search_seg_candidate(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.generations import generation_dir
    from medtailor.search_seg import run_coarse_candidate

    summary = run_coarse_candidate(
        args.output, args.generation, args.index, args.input, args.split, args.state, params
    )
    return summary, [generation_dir(args.output, args.generation) / f"candidate_{args.index}.json"]


def run_search_seg_tell(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.generations import generation_dir
    from medtailor.search_seg import run_coarse_tell

    summary = run_coarse_tell(args.output, args.generation, params)
    return summary, [generation_dir(args.output, args.generation) / "history.json"]


def run_search_seg_fine(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.search_seg.fine import run_fine_search

    summary = run_fine_search(
        args.search, args.input, args.split, args.state, args.output, params, log_step_metrics
    )
    figures = [Path(p) for p in summary.pop("figures")]
    files = ("selection.json", "history.csv", "fine_scores.csv")
    return summary, [*(args.output / name for name in files), *figures]


def run_search_seg(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    from medtailor.search_seg import run_coarse_search

    return run_coarse_search(args.output, args.input, args.split, args.state, params), []


def run_search_seg_final(args: argparse.Namespace, params: dict[str, Any]) -> Result:
    import mlflow

    from medtailor.search_seg.fine import run_search_seg_final as train_final

    output = args.output / args.name
    state = args.state or DATA / "train_seg_state" / args.name
    ingest = None if str(args.ingest) == "none" else args.ingest
    mlflow.set_tag("medtailor.model", args.name)
    summary = train_final(
        args.name,
        args.input,
        args.resample,
        args.split,
        ingest,
        output,
        state,
        params,
        log_step_metrics,
    )
    return summary, [output / name for name in ("best.pt", "dice.parquet", "history.csv")]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage as a subcommand: its runner, help, output and paths (the params
    keys it reads are in ``medtailor.config.stage_keys``)."""

    name: str
    run: Callable[[argparse.Namespace, dict[str, Any]], Result]
    help: str
    output: Path
    paths: dict[str, tuple[Path | None, str]] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


GENERATION = {"type": int, "required": True, "help": "search generation (0, 1, ...)"}
SEARCH_PATHS: dict[str, tuple[Path | None, str]] = {
    "input": (DATA / "patches", "patch store"),
    "resample": (DATA / "resample", "resample output folder"),
    "split": (DATA / "split" / "split.csv", "split table"),
    "state": (DATA / "search_state", "trained candidates, one folder per network"),
}
SEARCH_SEG_PATHS: dict[str, tuple[Path | None, str]] = {
    "input": (DATA / "resample", "resample output folder"),
    "split": (DATA / "split" / "split.csv", "split table"),
    "state": (DATA / "search_seg_state", "trained topologies and the supernet, one folder each"),
}
STAGES = [
    Stage(
        "synth",
        run_synth,
        "Write the deterministic synthetic dataset (DICOM radiographs and CT series, NIfTI "
        "volumes, label maps, boxes) from params 'synth' and 'seed'.",
        DATA / "synth",
    ),
    Stage(
        "ingest",
        run_ingest,
        "Audit and convert raw DICOM/NIfTI to NIfTI with a pseudonymous manifest, boxes and "
        "an audit report (audit.csv) of every rejected file.",
        DATA / "ingest",
        {"input": (None, "raw data folder (default: params ingest.input)")},
    ),
    Stage(
        "resample",
        run_resample,
        "Resample volumes to isotropic spacing and radiographs to a fixed pixel spacing; "
        "label maps and boxes follow their images.",
        DATA / "resample",
        {"input": (DATA / "ingest", "ingest output folder")},
    ),
    Stage(
        "split",
        run_split,
        "Assign every patient to train/val/test (params 'split'), stratified by the patients' "
        "label (lesion or not, or class); "
        "computed once and used by the detector and the patches.",
        DATA / "split" / "split.csv",
        {"input": (DATA / "resample", "resample output folder")},
    ),
    Stage(
        "train-detector",
        run_train_detector,
        "Train the built-in MONAI RetinaNet detectors (2D radiographs, 3D volumes) on the "
        "training split (params 'detector').",
        DATA / "detector",
        {
            "input": (DATA / "resample", "resample output folder"),
            "split": (DATA / "split" / "split.csv", "split table"),
        },
    ),
    Stage(
        "detector-cv-fold",
        run_detector_cv_fold,
        "One fold of the built-in detector's patient-level cross-validation over every "
        "patient (params 'detector.cross_validation_folds'): train on the other folds, "
        "choose the checkpoint on the next, score the fold.",
        DATA / "detector_cv" / "folds" / "fold0",
        {"input": (DATA / "resample", "resample output folder")},
        {"fold": {"type": int, "required": True, "help": "fold number (0, 1, ...)"}},
    ),
    Stage(
        "detector-cv",
        run_detector_cv,
        "Pool the cross-validation's folds: out-of-fold lesion recall at 1/10/20/100 "
        "candidates per image and AUFROC with patient-bootstrap CIs, per fold and pooled.",
        DATA / "detector_cv" / "report",
        {"input": (DATA / "resample", "resample output folder")},
        {
            "folds": {
                "type": Path,
                "nargs": "+",
                "required": True,
                "help": "the folds' folders (detector-cv-fold outputs)",
            }
        },
    ),
    Stage(
        "detect",
        run_detect,
        "Write candidate boxes (scores 0-100) for every image, from the trained detectors or "
        "from the external box file of params 'detector.external_boxes'.",
        DATA / "detect" / "candidates.parquet",
        {
            "input": (DATA / "resample", "resample output folder"),
            "detector": (
                None,
                "trained detector folder or external box file (default: from params)",
            ),
        },
    ),
    Stage(
        "patches",
        run_patches,
        "Label candidates by IoU with the ground truth and write the patch store "
        "(params 'patches'); with patches.source: whole_image, one sample per image of the "
        "classes table instead (no candidates read).",
        DATA / "patches",
        {
            "input": (DATA / "resample", "resample output folder"),
            "split": (DATA / "split" / "split.csv", "split table"),
            "candidates": (DATA / "detect" / "candidates.parquet", "candidate boxes"),
            "plots": (PLOTS, "folder for plots"),
        },
    ),
    Stage(
        "train",
        run_train,
        "Fine-tune the timm classifier of one named model configuration (params 'models.<name>' "
        "over the 'train' recipe) on the patch store; writes checkpoints and predictions. With "
        "compute.gpus > 1 it relaunches itself under torchrun, one process per GPU.",
        DATA / "models",
        {
            "input": (DATA / "patches", "patch store"),
            "state": (None, "resumable state folder (default: data/train_state/<model>)"),
        },
        {"model": {"required": True, "help": "name of a configuration in params 'models'"}},
    ),
    Stage(
        "score",
        run_score,
        "Score the test split of the patch store with a frozen model (a bundle: what "
        "medtailor predict and an external-validation project apply); writes "
        "predictions.parquet.",
        DATA / "scores",
        {"input": (DATA / "patches", "patch store")},
        {
            "model": {
                "type": Path,
                "required": True,
                "help": "the model's bundle folder (trained/<model> in an external project)",
            }
        },
    ),
    Stage(
        "study-train",
        run_study_train,
        "Train one configuration of a study (params 'studies.<study>', expanded into named "
        "configurations) with the train loop; like 'train', it relaunches itself under "
        "torchrun when compute.gpus > 1.",
        DATA / "studies",
        {
            "input": (DATA / "patches", "patch store"),
            "state": (None, "resumable state folder (default: data/study_state/<study>/<model>)"),
        },
        {
            "study": {"required": True, "help": "name of a study in params 'studies'"},
            "model": {"required": True, "help": "name of one of the study's configurations"},
        },
    ),
    Stage(
        "study",
        run_study,
        "Analyse every trained configuration of a study (tables, statistics, figures) into "
        "data/studies/<study>/report.",
        DATA / "studies",
        {
            "input": (DATA / "patches", "patch store"),
            "models": (
                None,
                "folder of the study's trained configurations "
                "(default: data/studies/<study>/models)",
            ),
        },
        {"study": {"required": True, "help": "name of a study in params 'studies'"}},
    ),
    Stage(
        "train-seg",
        run_train_seg,
        "Train the 3D segmentation network of one named configuration (params "
        "'seg_models.<name>' over the 'train_seg' recipe) on the labelled volumes; writes the "
        "checkpoint, Dice per volume and the predicted label maps (resampled and ingested grids).",
        DATA / "seg_models",
        {
            "input": (DATA / "resample", "resample output folder"),
            "split": (DATA / "split" / "split.csv", "split table"),
            "ingest": (
                DATA / "ingest",
                "ingest output folder: predictions also go back to each volume's ingested grid "
                "('none': resampled grid only)",
            ),
            "state": (None, "resumable state folder (default: data/train_seg_state/<model>)"),
        },
        {"model": {"required": True, "help": "name of a configuration in params 'seg_models'"}},
    ),
    Stage(
        "search",
        run_search,
        "Run the whole architecture search in one process (params 'search'): every "
        "generation's ask, candidates and tell, skipping what is already done.",
        DATA / "search",
        SEARCH_PATHS,
    ),
    Stage(
        "search-ask",
        run_search_ask,
        "Write the candidates of one search generation (replaying the history before it).",
        DATA / "search",
        {},
        {"generation": GENERATION},
    ),
    Stage(
        "search-candidate",
        run_search_candidate,
        "Fine-tune and score (validation AUFROC) one candidate of a search generation; a "
        "network already trained is not trained again.",
        DATA / "search",
        SEARCH_PATHS,
        {"generation": GENERATION, "index": {"type": int, "required": True, "help": "candidate"}},
    ),
    Stage(
        "search-tell",
        run_search_tell,
        "Add the scores of one search generation to the search history.",
        DATA / "search",
        {},
        {"generation": GENERATION},
    ),
    Stage(
        "search-summary",
        run_search_summary,
        "Summarise a finished search: history table, figures (score along the search, size "
        "against score, mutation rate) and the finalists.",
        DATA / "search_summary",
        {"input": (DATA / "search", "search folder")},
    ),
    Stage(
        "search-final",
        run_search_final,
        "Train one final model of the search (nas_top<k>, nas_reference, "
        "nas_reference_scratch, nas_winner_scratch) with search.final_recipe into "
        "<output>/<name>.",
        DATA / "models",
        {
            "input": (DATA / "search_summary", "search summary folder"),
            "patches": (DATA / "patches", "patch store"),
            "resample": (DATA / "resample", "resample output folder"),
            "split": (DATA / "split" / "split.csv", "split table"),
            "state": (None, "resumable state folder (default: data/train_state/<name>)"),
        },
        {"name": {"required": True, "help": "final model name"}},
    ),
    Stage(
        "search-seg",
        run_search_seg,
        "Run the whole coarse search of a segmentation network in one process (params "
        "'search_seg'): every generation's ask, candidates and tell, skipping what is done.",
        DATA / "search_seg",
        SEARCH_SEG_PATHS,
    ),
    Stage(
        "search-seg-ask",
        run_search_seg_ask,
        "Write the topologies of one coarse-search generation (from the history before it).",
        DATA / "search_seg",
        {},
        {"generation": GENERATION},
    ),
    Stage(
        "search-seg-candidate",
        run_search_seg_candidate,
        "Train one topology of a coarse-search generation from scratch and score its "
        "validation Dice; a topology already trained is not trained again.",
        DATA / "search_seg",
        SEARCH_SEG_PATHS,
        {"generation": GENERATION, "index": {"type": int, "required": True, "help": "candidate"}},
    ),
    Stage(
        "search-seg-tell",
        run_search_seg_tell,
        "Add the scores of one coarse-search generation to its history.",
        DATA / "search_seg",
        {},
        {"generation": GENERATION},
    ),
    Stage(
        "search-seg-fine",
        run_search_seg_fine,
        "On the coarse search's best topology, train the single-path supernet and score random "
        "operation assignments; writes the selection, the search's tables and figures.",
        DATA / "search_seg_fine",
        {**SEARCH_SEG_PATHS, "search": (DATA / "search_seg", "coarse search folder")},
    ),
    Stage(
        "search-seg-final",
        run_search_seg_final,
        "Train the selected segmentation network from scratch (search_seg.final_recipe) as "
        "<output>/<name> (c2fnas_searched, or c2fnas_searched_x<m> for a channel multiplier).",
        DATA / "seg_models",
        {
            "input": (DATA / "search_seg_fine", "fine search output folder"),
            "resample": (DATA / "resample", "resample output folder"),
            "split": (DATA / "split" / "split.csv", "split table"),
            "ingest": (DATA / "ingest", "ingest output folder ('none': resampled grid only)"),
            "state": (None, "resumable state folder (default: data/train_seg_state/<name>)"),
        },
        {"name": {"required": True, "help": "final segmentation model name"}},
    ),
    Stage(
        "evaluate",
        run_evaluate,
        "Evaluate trained models (AUC, operating point, FROC/AUFROC with patient-bootstrap CIs, "
        "patient-clustered DeLong/McNemar comparisons, Grad-CAM) and write the report (params "
        "'evaluate'). Each model is rebuilt from its own checkpoint, so any trained folder works.",
        DATA / "evaluate",
        {
            "input": (DATA / "patches", "patch store"),
            "resample": (DATA / "resample", "resample output folder"),
            "split": (DATA / "split" / "split.csv", "split table"),
        },
        {
            "trained": {
                "nargs": "+",
                "type": Path,
                "default": [DATA / "models"],
                "help": "trained model folders (each with best.pt and predictions.parquet), or "
                "folders of them (default: data/models)",
            },
            "models": {
                "nargs": "*",
                "default": None,
                "help": "evaluate only these model names (folder names; default: every one found)",
            },
            "segmented": {
                "type": Path,
                "default": Path("none"),
                "help": "folder of trained segmentation models (train-seg outputs, e.g. "
                "data/seg_models): the report then has their Dice table (default: none)",
            },
            "search-summary": {
                "type": Path,
                "default": Path("none"),
                "help": "the architecture search's summary folder (search-summary output): the "
                "report then has the search's table and figures (default: none)",
            },
            "search-seg": {
                "type": Path,
                "default": Path("none"),
                "help": "the segmentation search's fine folder (search-seg-fine output): the "
                "report then has the search's selection and figures (default: none)",
            },
        },
    ),
]


def record_summary(summary: dict[str, Any], metrics: Path, artifacts: list[Path]) -> None:
    """Write the stage summary as its DVC metrics file and log it, with artefacts, to MLflow."""
    import mlflow

    from medtailor.imageio import atomic_output

    # NaN marks an undefined metric (e.g. recall with no lesion); JSON says null.
    finite = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}
    with atomic_output(metrics) as tmp:
        tmp.write_text(json.dumps(finite, indent=2) + "\n")
    numbers = {k: float(v) for k, v in finite.items() if isinstance(v, int | float)}
    mlflow.log_metrics(numbers)
    for path in [metrics, *artifacts]:
        if path.exists():
            mlflow.log_artifact(str(path))


def launch_distributed(argv: list[str], processes: int) -> int:
    """Run this same command under torchrun with ``processes`` workers (one per GPU);
    torchrun sets RANK/WORLD_SIZE, so the workers train and do not relaunch."""
    import subprocess

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "medtailor.cli",
        *argv,
    ]
    log.info("compute.gpus = %d: launching %s", processes, " ".join(command))
    return subprocess.run(command, check=False).returncode


def execute(stage: Stage, args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    from medtailor.config.stage_keys import stage_view, undeclared_key_error
    from medtailor.tracking import stage_run

    run_name = stage.name.replace("-", "_")
    model = getattr(args, "model", None)
    study = getattr(args, "study", None)
    view = stage_view(params, stage.name, None if study else model, study)
    set_threads(args.threads)
    default_metrics = METRICS / f"{stage.name.replace('-', '_')}.json"
    if stage.name in ("search-final", "search-seg-final"):
        kind = "train" if stage.name == "search-final" else "train_seg"
        run_name = f"{kind}:{args.name}"
        if args.metrics == default_metrics:
            args.metrics = METRICS / kind / f"{args.name}.json"
    elif (
        stage.name.startswith("search-")
        and args.metrics == default_metrics
        and hasattr(args, "generation")
    ):
        # search-ask -> metrics/search/g000_ask.json, search-seg-ask -> metrics/search_seg/...
        search, step = stage.name.rsplit("-", 1)
        index = f"_{args.index}" if step == "candidate" else ""
        folder = METRICS / search.replace("-", "_")
        args.metrics = folder / f"g{args.generation:03d}_{step}{index}.json"
    if stage.name == "score":
        run_name = f"score:{Path(args.model).name}"
    if stage.name == "detector-cv-fold":
        run_name = f"detector_cv_fold:{args.fold}"
    if stage.name == "train-seg":
        run_name = f"train_seg:{args.model}"
        if args.metrics == default_metrics:
            args.metrics = METRICS / "train_seg" / f"{args.model}.json"
    if stage.name in ("study-train", "study") and args.metrics == default_metrics:
        name = f"{args.study}/{args.model}" if stage.name == "study-train" else args.study
        args.metrics = METRICS / "studies" / f"{name}.json"
    if stage.name == "study-train":
        run_name = f"study_train:{args.study}:{args.model}"
    if stage.name in ("train", "study-train"):
        if stage.name == "train":
            run_name = f"train:{args.model}"
            if args.metrics == METRICS / "train.json":
                args.metrics = METRICS / "train" / f"{args.model}.json"
        gpus = int(params["compute"]["gpus"])
        if gpus > 1 and "WORLD_SIZE" not in os.environ:
            code = launch_distributed(args.argv, gpus)
            if code:
                raise RuntimeError(f"distributed training exited with code {code}")
            return json.loads(args.metrics.read_text())
    try:
        if not is_rank_zero():  # only rank 0 logs to MLflow and writes metrics
            stage.run(args, view)
            return {}
        with stage_run(run_name, view, study, analysis=stage.name == "study"):
            summary, artifacts = stage.run(args, view)
            record_summary(summary, args.metrics, artifacts)
    except KeyError as exc:
        raise undeclared_key_error(run_name, exc, params) from exc
    return summary


def set_threads(threads: int | None) -> None:
    """Hold the job to the cores Snakemake (``threads:``) or Slurm gave it: the OpenMP/BLAS
    pools of the libraries a stage loads later (torch included) read these variables;
    torch, when already loaded, is told directly. Stages that never use torch do not
    pay for importing it."""
    if not threads:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def models_command(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    from medtailor.train import model_entry, model_info

    names = (
        sorted(params.get("models", {})) if args.action == "list" or not args.names else args.names
    )
    for name in names:
        entry = model_entry(params, name)
        line = (
            f"{name:<22} {entry['model']:<22} init={entry['init']:<12} "
            f"head={entry['head']['type']:<9} unfreeze={entry['unfreeze']} "
            f"truncate={entry['truncate']}"
        )
        if args.action == "info":
            info = model_info(entry, input_size=args.input_size)
            line += (
                f"\n{'':<22} parameters {info['parameters'] / 1e6:.2f} M "
                f"(trainable {info['trainable_parameters'] / 1e6:.2f} M), "
                f"MACs {info['macs'] / 1e9:.3f} G at {info['input_size']}x{info['input_size']}"
            )
        print(line)
    return {}


def export_command(args: argparse.Namespace) -> dict[str, Any]:
    from medtailor.export import export_classifier

    record = export_classifier(args.model, args.format, args.output)
    print(
        f"wrote {args.output / record['file']} ({record['format']}); its logits differ from "
        f"PyTorch's by at most {record['max_abs_difference']:.2g} on a batch of "
        f"{record['checked_batch']}; input {record['input']['shape']} in [0, 1] "
        f"(see {args.output / 'export.json'})"
    )
    return {}


def predict_command(args: argparse.Namespace) -> dict[str, Any]:
    from medtailor.predict import run_predict

    set_threads(args.threads)
    summary = run_predict(args.model, args.input, args.output, args.boxes)
    if "label_maps" in summary:
        print(
            f"label maps of {summary['images_of_kind']} volume(s) on their original grids in "
            f"{summary['label_maps']}; voxels and mL per class in {args.output / 'findings.csv'}"
        )
        return summary
    print(
        f"{summary['findings']} findings on {summary['images_of_kind']} image(s), "
        f"{summary['positive']} at or above the validation threshold: "
        f"{args.output / 'findings.csv'} (overlays in {args.output / 'overlays'}; "
        f"rejected inputs in {args.output / 'work' / 'ingest' / 'audit.csv'})"
    )
    return summary


def project_stages(params: dict[str, Any], data: Path) -> list[tuple[str, Path]]:
    """(stage, output folder) of every stage this project's params.yaml runs (the stages
    of its DVC pipeline: a whole-image project has no detector, a project without the
    search no search stages), each folder once, under the first stage that writes it."""
    from medtailor.workflow.dvc_stages import dvc_pipeline

    enabled = set(dvc_pipeline(params)["stages"])
    found: dict[Path, str] = {}
    for stage in STAGES:
        name = stage.name.replace("-", "_")
        for step in ("_ask", "_candidate", "_tell"):
            name = name.removesuffix(step)
        if name not in enabled:
            continue
        found.setdefault(data / stage.output.relative_to(DATA).parts[0], stage.name)
    return [(stage, folder) for folder, stage in found.items()]


BENCHMARKS = Path("benchmarks")


def job_times(folder: Path = BENCHMARKS) -> list[tuple[str, int, float]]:
    """(rule, jobs, seconds) from the benchmark files Snakemake writes for every job
    (``benchmarks/<rule>[/<job>].tsv``), longest first."""
    import pandas as pd

    totals: dict[str, list[float]] = {}
    for path in sorted(folder.rglob("*.tsv")):
        parts = path.relative_to(folder).parts
        rule = parts[0].removesuffix(".tsv")
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
        totals.setdefault(rule, []).append(seconds)
    rows = [(rule, len(times), sum(times)) for rule, times in totals.items()]
    return sorted(rows, key=lambda row: -row[2])


def time_lines(rows: list[tuple[str, int, float]]) -> list[str]:
    if not rows:
        return []
    total = sum(seconds for _, _, seconds in rows)
    lines = [
        f"  time per stage (Snakemake benchmarks/, {total / 60:.1f} min of job time; jobs "
        "that ran side by side overlap):"
    ]
    for rule, jobs, seconds in rows:
        share = seconds / total if total else 0.0
        lines.append(f"    {rule:<22} {jobs:>3} job(s) {seconds / 60:6.1f} min  {share:4.0%}")
    return lines


def status(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    from medtailor.tracking import tracking_uri

    lines = ["medtailor outputs:"]
    for stage, folder in project_stages(params, args.data):
        state = "done" if folder.exists() else "not run"
        lines.append(f"  {stage:<15} {folder}/  [{state}]")
        summary_file = METRICS / f"{stage.replace('-', '_')}.json"
        if summary_file.exists():
            lines.append(f"  {'':<15} metrics: {json.loads(summary_file.read_text())}")
    audit = args.data / "ingest" / "audit.csv"
    if audit.exists():
        n = max(len(audit.read_text().splitlines()) - 1, 0)
        lines.append(f"  audit report    {audit}  ({n} rejected input(s), each with its reason)")
    lines.append(
        f"  {'records':<15} a Snakemake run is recorded in dvc.lock (dvc repro then reruns "
        "nothing); a dvc repro is not recorded for Snakemake, which reruns what DVC ran: "
        "use one of them per change"
    )
    lines += time_lines(job_times())
    uri = tracking_uri(params["tracking"])
    lines.append(f"  MLflow          {uri}  (experiment '{params['tracking']['experiment']}')")
    lines.append(
        f"  {'':<15} browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    )
    print("\n".join(lines))
    return {}


def init_command(args: argparse.Namespace) -> dict[str, Any]:
    from medtailor.workflow import init_project

    for step in init_project(
        args.folder, args.input, args.task, args.external, args.example, args.source, args.scale,
        args.limit,
    ):  # fmt: skip
        print(f"  {step}")
    if args.external is not None:
        print(
            f"external-validation project ready in {args.folder}: {args.external}'s frozen "
            f"models score {args.input} (no training job). Next:\n"
            f"  cd {args.folder}\n"
            "  snakemake --cores 2            # the report: data/evaluate/report.md"
        )
        return {}
    if args.example is not None:
        print(
            f"example project {args.example} ready in {args.folder} ({args.scale} scale; its "
            "data linked into raw/). Next:\n"
            f"  cd {args.folder}\n"
            "  snakemake --cores 2            # the report: data/evaluate/report.md"
        )
        return {}
    what = {
        "demo": "every stage of the demo",
        "detection": "detector, candidate patches and classifiers (search.enabled: false)",
        "whole-image": "one sample per image of annotations/classes.csv, no detector",
        "segmentation": "3D segmentation of annotations/labels.csv (search_seg.enabled: false)",
    }[args.task]
    where = (
        f"  params.yaml ({args.task}: {what}) reads your data from {args.input} "
        "(ingest.input); review its models there\n"
        if args.input
        else f"  edit params.yaml ({args.task}: {what}; ingest.input: your raw data folder)\n"
    )
    print(
        f"medtailor project ready in {args.folder}. Next:\n"
        f"  cd {args.folder}\n"
        f"{where}"
        "  export MEDTAILOR_PSEUDONYM_SALT=...   # a secret salt for the pseudonymous IDs\n"
        "  snakemake --cores 2            # or: snakemake --profile slurm\n"
        "  dvc repro                      # alternatively, DVC runs the same stages"
    )
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medtailor",
        description="Reproducible medical-imaging pipeline: synth -> ingest -> resample -> "
        "split -> train-detector -> detect -> patches -> train -> evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"medtailor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        p.add_argument(
            "--params",
            type=Path,
            default=Path("params.yaml"),
            help="params file (default: params.yaml)",
        )
        p.add_argument(
            "--output",
            type=Path,
            default=stage.output,
            help=f"output folder (default: {stage.output})",
        )
        p.add_argument(
            "--threads",
            type=int,
            default=1,
            help="CPU threads for torch and numerical libraries (Snakemake passes the rule's "
            "threads; default 1: a library's own default takes every core, which on a "
            "shared machine made detection 6x slower)",
        )
        metrics = METRICS / f"{stage.name.replace('-', '_')}.json"
        p.add_argument(
            "--metrics", type=Path, default=metrics, help=f"summary JSON (default: {metrics})"
        )
        for name, options in stage.options.items():
            p.add_argument(f"--{name}", **options)
        for name, (default, text) in stage.paths.items():
            shown = f" (default: {default})" if default is not None else ""
            p.add_argument(f"--{name}", type=Path, default=default, help=f"{text}{shown}")
        p.set_defaults(func=lambda args, params, stage=stage: execute(stage, args, params))
    p = sub.add_parser(
        "models", help="List model configurations, or show their parameters and MACs."
    )
    p.add_argument("action", choices=["list", "info"])
    p.add_argument("names", nargs="*", help="configurations (default: all)")
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input side for MACs (default: the configuration's)",
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.set_defaults(func=models_command)
    p = sub.add_parser(
        "init",
        help="Make a folder a medtailor project of your own: params.yaml, a Snakefile that "
        "runs the installed workflow, Slurm profile, dvc.yaml, git and DVC.",
    )
    p.add_argument("folder", type=Path, help="project folder (created if missing)")
    p.add_argument(
        "--input",
        type=Path,
        default=None,
        help="raw data folder, written as ingest.input (default: the synthetic demo's)",
    )
    p.add_argument(
        "--task",
        choices=TASKS,
        default="demo",
        help="what the project runs: demo (every stage, default), detection (detector, "
        "candidate patches, classifiers), whole-image (one sample per image of "
        "annotations/classes.csv) or segmentation (3D networks on annotations/labels.csv); "
        "params.yaml then holds only that task's blocks",
    )
    p.add_argument(
        "--example",
        default=None,
        help="an example project on a public dataset (docs/reproductions.md): "
        f"{', '.join(example_names())}; needs --source",
    )
    p.add_argument("--source", type=Path, default=None, help="the example's dataset folder")
    p.add_argument(
        "--scale",
        choices=["cpu", "study"],
        default="cpu",
        help="the example's CPU scale (default) or the study's own (GPUs)",
    )
    p.add_argument("--limit", type=int, default=None, help="the example on this many patients only")
    p.add_argument(
        "--external",
        type=Path,
        default=None,
        help="a trained project: make an external-validation project whose DAG scores "
        "--input (a labelled cohort) with that project's frozen classifiers, no training",
    )
    p.set_defaults(func=init_command, needs_params=False)
    p = sub.add_parser(
        "export",
        help="Write a trained classifier as TorchScript or ONNX, checked against PyTorch.",
    )
    p.add_argument("--model", type=Path, required=True, help="trained model folder (best.pt)")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="onnx")
    p.add_argument(
        "--output", type=Path, default=Path("export"), help="output folder (default: export)"
    )
    p.set_defaults(func=export_command, needs_params=False)
    p = sub.add_parser(
        "predict",
        help="Apply a trained classifier to new scans: findings.csv and an overlay per image.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a project's trained model folder (data/models/<name>), a bundle written by "
        "predict (<output>/model), or an MLflow model URI (models:/<name>/<version>)",
    )
    p.add_argument(
        "--input", type=Path, required=True, help="raw folder, in the layouts ingest accepts"
    )
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument(
        "--boxes",
        type=Path,
        default=None,
        help="the new scans' boxes, for a model trained on the user's own boxes",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.set_defaults(func=predict_command, needs_params=False)
    p = sub.add_parser("status", help="Show where the outputs, audit report and MLflow runs are.")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--data", type=Path, default=DATA, help="data folder (default: data)")
    p.set_defaults(func=status)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if getattr(args, "needs_params", True):
            summary = args.func(args, load_params(args.params))
        else:
            summary = args.func(args)
    except ParamsError as exc:
        print(f"medtailor {args.command}: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"medtailor {args.command}: {exc}", file=sys.stderr)
        return Terminated.exit_code
    except Exception as exc:
        # The full traceback goes to the log (a rule's log file under Snakemake/DVC), the
        # last line says what failed in one sentence.
        log.error("medtailor %s failed", args.command, exc_info=True)
        print(f"medtailor {args.command}: error: {exc}", file=sys.stderr)
        return 1
    if summary:
        print(json.dumps({args.command: summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
