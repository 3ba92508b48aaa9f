"""A bundle as an MLflow model: the pyfunc flavour that ``mlflow models serve`` answers with.

Its input is one row per radiograph: ``image``, the pixel rows (a list of lists, as a
viewer shows the image: row = y, column = x), and ``spacing_mm``, the pixel spacing. Each
image is written as a 2D NIfTI with that spacing (its file name ``input_<k>``) and goes
through ``medtailor predict`` with the bundle; the output is ``findings.csv``'s rows of
every image, with ``input`` the row of the request they answer.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; keeps the import cheap
    PythonModel = object

BUNDLE_ARTIFACT = "bundle"


def request_files(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """Write each request row as ``input_<k>.nii.gz`` (x along the first axis) in
    ``folder``; returns the files."""
    from medtailor.imageio import save_nifti
    from medtailor.spatial import planar_affine

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, row in enumerate(frame.itertuples(index=False)):
        pixels = np.asarray([np.asarray(line, float) for line in row.image], np.float32)
        if pixels.ndim != 2:
            raise ValueError(f"request row {k}: image is {pixels.ndim}-D, expected rows of pixels")
        spacing = float(row.spacing_mm)
        path = folder / f"input_{k:05d}.nii.gz"
        save_nifti(path, pixels.T, planar_affine((spacing, spacing)))
        written.append(path)
    return written


class BundleModel(PythonModel):
    """``medtailor predict`` behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        self.bundle = Path(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        from medtailor.predict import run_predict

        with tempfile.TemporaryDirectory(prefix="medtailor-serve-") as scratch:
            raw, out = Path(scratch) / "raw", Path(scratch) / "out"
            request_files(model_input, raw)
            run_predict(str(self.bundle), raw, out)
            findings = pd.read_csv(out / "findings.csv")
        # input_<k> is the (k + 1)-th of the sorted input files: its source_row.
        findings.insert(0, "input", findings["source_row"] - 1)
        return findings.drop(columns=["source_row"])


def example_request(image: np.ndarray, spacing_mm: float) -> pd.DataFrame:
    """One request row from an image array (x, y as ingest stores it)."""
    return pd.DataFrame(
        {"image": [np.asarray(image, float).T.tolist()], "spacing_mm": [spacing_mm]}
    )


# The logged input example: its shape only (a blank image), so no patient's pixels are
# copied into every registered model.
BLANK_EXAMPLE = example_request(np.zeros((32, 32)), 0.4)


def registered_name(project: Path, model: str) -> str:
    """``<project>-<model>``, in the characters MLflow model URIs take."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{project.resolve().name}-{model}")


def register_models(
    folders: dict[str, Path],
    params: dict[str, Any],
    project: Path,
    detector_dir: Path,
) -> dict[str, str]:
    """Log every trained classifier in ``folders`` as an MLflow model of the active run,
    registered as ``<project>-<model>``; returns model -> registered name."""
    import mlflow

    from medtailor.predict.bundle import write_bundle
    from medtailor.tracking import git_commit

    commit = git_commit(project)
    registered = {}
    with tempfile.TemporaryDirectory(prefix="medtailor-bundle-") as scratch:
        for name, folder in sorted(folders.items()):
            bundle = Path(scratch) / name
            write_bundle(folder, params, detector_dir, bundle, commit)
            registered[name] = registered_name(project, name)
            mlflow.pyfunc.log_model(
                name=f"model-{name}",
                registered_model_name=registered[name],
                **model_arguments(bundle, BLANK_EXAMPLE),
            )
    return registered


def model_arguments(bundle: Path, example: pd.DataFrame | None) -> dict[str, Any]:
    """What log_model takes: the wrapper, the bundle, the requirements
    (given, so MLflow does not import the model to guess them) and the signature."""
    from importlib.metadata import version

    from mlflow.models import infer_signature

    arguments: dict[str, Any] = {
        "python_model": str(Path(__file__).with_name("mlflow_model.py")),
        "artifacts": {BUNDLE_ARTIFACT: str(bundle)},
        "pip_requirements": [f"medtailor=={version('medtailor')}"],
    }
    if example is not None:
        arguments["signature"] = infer_signature(example)
        arguments["input_example"] = example
    return arguments
