"""Images that come as plain files: PNG/JPEG/TIFF radiographs (CheXpert, ChestX-ray14,
ultrasound sets) and MetaImage/NRRD volumes (LUNA16, LIDC exports).

Radiographs are read with Pillow: 8- and 16-bit grayscale as they are, colour converted
to grayscale (ITU-R 601 luma) with a note in the manifest. Such files carry no calibrated
spacing, so they take ``ingest.assumed_radiograph_spacing_mm`` or are rejected. Volumes
are read with SimpleITK with their geometry (origin, spacing, direction: LPS, turned
into the pipeline's RAS affine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtailor.ingest.audit import Rejected
from medtailor.spatial import LPS_TO_RAS, planar_affine

RADIOGRAPH_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
VOLUME_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
# Data files a MetaImage/NRRD header points to: read through their header, never alone.
DETACHED_DATA_SUFFIXES = (".raw", ".zraw", ".raw.gz")


def is_radiograph_file(rel: str) -> bool:
    return rel.lower().endswith(RADIOGRAPH_SUFFIXES)


def is_volume_file(rel: str) -> bool:
    return rel.lower().endswith(VOLUME_SUFFIXES)


def is_detached_data(rel: str, all_rels: set[str]) -> bool:
    """A .raw/.zraw next to a MetaImage or NRRD header of the same stem."""
    lower = rel.lower()
    suffix = next((s for s in DETACHED_DATA_SUFFIXES if lower.endswith(s)), None)
    if suffix is None:
        return False
    stem = rel[: -len(suffix)]
    return any(f"{stem}{header}" in all_rels for header in (".mhd", ".nhdr", ".MHD", ".NHDR"))


def load_radiograph_file(
    path: Path, assumed_spacing_mm: float | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """(array indexed (column, row), planar affine, note) of an image file."""
    from PIL import Image, UnidentifiedImageError

    if assumed_spacing_mm is None:
        raise Rejected(
            "image file without a calibrated pixel spacing: set "
            "ingest.assumed_radiograph_spacing_mm to ingest such files"
        )
    try:
        with Image.open(path) as image:
            image.load()
            mode, frames = image.mode, getattr(image, "n_frames", 1)
            if frames > 1:
                raise Rejected(f"image file with {frames} frames: only single images are read")
            if mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
                array, note = np.asarray(image, dtype=np.float32), f"grayscale ({mode})"
            elif mode in ("1", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                array = np.asarray(image.convert("L"), dtype=np.float32)
                note = f"colour ({mode}) converted to grayscale"
            else:
                raise Rejected(f"image file in pixel mode {mode!r}: not a grayscale image")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise Rejected("not readable as an image file", f"{type(exc).__name__}: {exc}") from exc
    if array.ndim != 2 or min(array.shape) == 0:
        raise Rejected(f"image file of shape {array.shape}: not a 2D image")
    spacing = float(assumed_spacing_mm)
    return array.T, planar_affine((spacing, spacing)), note


def load_volume_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed (x, y, z), RAS affine of voxel centres) of a MetaImage/NRRD volume."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise Rejected("not readable as a MetaImage/NRRD volume", str(exc).strip()) from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise Rejected(
            f"{image.GetDimension()}-D image with {image.GetNumberOfComponentsPerPixel()} "
            "component(s) per voxel: only 3D single-channel volumes are read"
        )
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return array, LPS_TO_RAS @ lps
