"""Pure renderers of the synthetic images: radiographs with fractures, CT-like volumes.

Everything here is numpy in, numpy out, driven by an explicit ``numpy.random.Generator``
so the dataset is a deterministic function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STORED_MAX_12BIT = 4095
LESION_LABEL = 1
BONE_LABEL = 2


@dataclass(frozen=True)
class Box:
    """Corner box on voxel edges (voxel i spans [i, i+1)); z0/z1 are None in 2D."""

    x0: float
    y0: float
    x1: float
    y1: float
    z0: float | None = None
    z1: float | None = None


def box_of_mask(mask: np.ndarray) -> Box:
    """Tight edge box around the True voxels of a 2D or 3D mask."""
    where = np.nonzero(mask)
    lo = [int(w.min()) for w in where]
    hi = [int(w.max()) + 1 for w in where]
    if mask.ndim == 2:
        return Box(lo[0], lo[1], hi[0], hi[1])
    return Box(lo[0], lo[1], hi[0], hi[1], lo[2], hi[2])


def _segment_distance(px: np.ndarray, py: np.ndarray, p0: np.ndarray, p1: np.ndarray):
    """Distance of points to segment p0-p1, and the position t in [0, 1] along it."""
    axis = p1 - p0
    t = ((px - p0[0]) * axis[0] + (py - p0[1]) * axis[1]) / float(axis @ axis)
    t = np.clip(t, 0.0, 1.0)
    dx = px - (p0[0] + t * axis[0])
    dy = py - (p0[1] + t * axis[1])
    return np.hypot(dx, dy), t


def _tube_thickness(distance: np.ndarray, r_out: float, r_in: float) -> np.ndarray:
    """Projected bone path length through a cortical tube: dense shell, lighter marrow."""
    shell = 2.0 * np.sqrt(np.clip(r_out**2 - distance**2, 0.0, None))
    marrow = 2.0 * np.sqrt(np.clip(r_in**2 - distance**2, 0.0, None))
    return shell - 0.8 * marrow


def render_radiograph(
    rng: np.random.Generator,
    columns: int,
    rows: int,
    spacing_mm: float,
    n_fractures: int,
) -> tuple[np.ndarray, list[Box]]:
    """A projection radiograph of long bones, indexed (x=column, y=row), 12-bit stored values.

    Each fracture is a thin lucent line across a bone with a small step of the distal
    fragment and a sclerotic margin; its box covers the affected bone plus 1.5 mm.
    """
    px, py = np.meshgrid(
        (np.arange(columns) + 0.5) * spacing_mm, (np.arange(rows) + 0.5) * spacing_mm, indexing="ij"
    )
    width, height = columns * spacing_mm, rows * spacing_mm
    # Soft tissue: an elliptic limb whose projected thickness falls off to the skin.
    cx, cy = width * rng.uniform(0.45, 0.55), height * rng.uniform(0.45, 0.55)
    ax, ay = width * rng.uniform(0.35, 0.45), height * rng.uniform(0.6, 0.8)
    limb = np.clip(1.0 - ((px - cx) / ax) ** 2 - ((py - cy) / ay) ** 2, 0.0, None)
    mu = 0.012 * 60.0 * np.sqrt(limb)

    n_bones = int(rng.integers(1, 3))
    bones = []
    for b in range(n_bones):
        offset = (b - (n_bones - 1) / 2) * width * 0.22
        top = np.array([cx + offset + rng.normal(0, 2), height * rng.uniform(0.02, 0.12)])
        bottom = np.array([cx + offset + rng.normal(0, 6), height * rng.uniform(0.88, 0.98)])
        r_out = rng.uniform(4.5, 7.0)
        bones.append((top, bottom, r_out, r_out * rng.uniform(0.55, 0.7)))

    fracture_sites = [int(rng.integers(0, n_bones)) for _ in range(n_fractures)]
    boxes: list[Box] = []
    margin = int(np.ceil(1.5 / spacing_mm))
    for index, (p0, p1, r_out, r_in) in enumerate(bones):
        distance, _ = _segment_distance(px, py, p0, p1)
        axis = (p1 - p0) / np.linalg.norm(p1 - p0)
        normal = np.array([-axis[1], axis[0]])
        # Each fracture displaces everything distal to it sideways by a small step, so the
        # steps add up along the bone; the lucent line and sclerotic rim multiply in.
        shift = np.zeros_like(px)
        density = np.ones_like(px)
        for site in sorted(rng.uniform(0.2, 0.8) for s in fracture_sites if s == index):
            centre = p0 + site * (p1 - p0)
            tilt = np.deg2rad(rng.uniform(-35, 35))
            line_dir = np.cos(tilt) * normal + np.sin(tilt) * axis
            line_normal = np.array([-line_dir[1], line_dir[0]])
            if line_normal @ axis < 0:
                line_normal = -line_normal
            signed = (px - centre[0]) * line_normal[0] + (py - centre[1]) * line_normal[1]
            gap = rng.uniform(0.8, 1.5)
            step = rng.uniform(0.8, 2.0) * rng.choice([-1.0, 1.0])
            shift = shift + np.where(signed > 0, step, 0.0)
            lucent = np.abs(signed) < gap / 2
            sclerotic = (np.abs(signed) < gap / 2 + 1.5) & ~lucent
            density = density * np.where(lucent, 0.1, np.where(sclerotic, 1.3, 1.0))
            affected = (np.abs(signed) < gap / 2 + 1.5) & (distance < r_out + abs(step) + 0.5)
            box = box_of_mask(affected)
            boxes.append(
                Box(
                    max(box.x0 - margin, 0),
                    max(box.y0 - margin, 0),
                    min(box.x1 + margin, columns),
                    min(box.y1 + margin, rows),
                )
            )
        displaced, _ = _segment_distance(px - shift * normal[0], py - shift * normal[1], p0, p1)
        mu = mu + 0.07 * density * _tube_thickness(displaced, r_out, r_in)

    signal = 300.0 + 3300.0 * (1.0 - np.exp(-mu))
    signal += rng.normal(0.0, 25.0, signal.shape)
    stored = np.clip(np.rint(signal), 0, STORED_MAX_12BIT).astype(np.uint16)
    return stored, boxes


def render_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    n_lesions: int,
) -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """A CT-like volume in HU (int16) with its label map (1 lesion, 2 bone) and lesion boxes."""
    grids = np.meshgrid(
        *[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing_mm, strict=True)], indexing="ij"
    )
    x, y, z = grids
    extent = [n * s for n, s in zip(shape, spacing_mm, strict=True)]
    cx, cy = extent[0] / 2, extent[1] / 2
    rx, ry = extent[0] * rng.uniform(0.38, 0.45), extent[1] * rng.uniform(0.32, 0.4)
    body = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    hu = np.where(body, 40.0, -1000.0)
    labels = np.zeros(shape, np.uint8)

    spine_c = np.array([cx + rng.normal(0, 1.0), cy + ry * 0.6])
    spine_r = rng.uniform(4.0, 6.0)
    spine = (x - spine_c[0]) ** 2 + (y - spine_c[1]) ** 2 <= spine_r**2
    hu[spine] = 700.0
    labels[spine] = BONE_LABEL

    boxes: list[Box] = []
    for _ in range(n_lesions):
        for _attempt in range(50):
            radius = rng.uniform(3.0, 6.0)
            centre = np.array(
                [
                    cx + rng.uniform(-0.6, 0.6) * (rx - radius),
                    cy + rng.uniform(-0.6, 0.3) * (ry - radius),
                    rng.uniform(radius + spacing_mm[2], extent[2] - radius - spacing_mm[2]),
                ]
            )
            lesion = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
            if lesion.any() and not (labels[lesion] != 0).any():
                break
        else:
            continue
        hu[lesion] = 110.0
        labels[lesion] = LESION_LABEL
        boxes.append(box_of_mask(lesion))

    hu += rng.normal(0.0, 12.0, shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels, boxes


# Direction matrices (RAS columns) of common acquisitions. The DICOM series among them
# are right-handed (the slice axis is the normal of the image plane); the NIfTI-only
# ones include the left-handed layouts that NIfTI files often carry (e.g. LAS).
DICOM_ORIENTATIONS = {
    "axial": np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], float),  # LPS
    "coronal": np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], float),  # L I P
    "sagittal": np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float),  # P I R
}
NIFTI_ORIENTATIONS = {
    "RAS": np.eye(3),
    "LAS": np.diag([-1.0, 1.0, 1.0]),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "RPI": np.diag([1.0, -1.0, -1.0]),
}


def volume_affine(
    rng: np.random.Generator, direction: np.ndarray, spacing_mm: tuple[float, float, float]
) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing_mm, float)
    affine[:3, 3] = rng.uniform(-150, 150, 3).round(3)
    return affine
