"""Benchmark: medtailor resampling against SimpleITK on a 512x512x300 CT-sized volume.

Each measurement runs in its own process so peak memory (ru_maxrss) is its own.
Usage: python bench/resample_vs_sitk.py [--shape 512 512 300] [--out bench/results/resample.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPACING = (0.7, 0.7, 2.5)
TARGET = (1.0, 1.0, 1.0)


def make_volume(shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    from scipy import ndimage

    small = rng.normal(0, 300, tuple(max(n // 8, 2) for n in shape)).astype(np.float32)
    return ndimage.zoom(small, [n / m for n, m in zip(shape, small.shape, strict=True)], order=1)


def measure(engine: str, order: int, shape: tuple[int, int, int], threads: int) -> dict:
    volume = make_volume(shape)
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if engine == "medtailor":
        from medtailor.resample.resampling import grid_map, lowres_axis, resample_image

        gmap = grid_map(shape, SPACING, TARGET)
        separate = lowres_axis(SPACING, 3.0) if order == 3 else None
        # SimpleITK interpolates without a low-pass filter: time the same work (the stage's
        # anti-aliasing adds one Gaussian pass on the downsampled axes).
        out = resample_image(
            volume, gmap, order=order, separate_axis=separate, order_separate=0, antialias=False
        )
    else:
        import SimpleITK as sitk

        from medtailor.resample.resampling import grid_map

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        gmap = grid_map(shape, SPACING, TARGET)
        image = sitk.GetImageFromArray(volume.transpose(2, 1, 0).copy())
        image.SetSpacing(SPACING)
        origin = [gmap.offset[a] * SPACING[a] for a in range(3)]
        interpolator = {1: sitk.sitkLinear, 3: sitk.sitkBSpline}[order]
        out = sitk.Resample(
            image,
            list(gmap.out_shape),
            sitk.Transform(),
            interpolator,
            origin,
            TARGET,
            image.GetDirection(),
            0.0,
            sitk.sitkFloat32,
        )
        out = sitk.GetArrayFromImage(out)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "engine": engine,
        "order": order,
        "threads": threads,
        "seconds": round(seconds, 2),
        "peak_mb": round(peak_mb),
        "peak_above_input_mb": round(peak_mb - baseline_mb),
        "output_megavoxels": round(out.size / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--out", type=Path, default=Path("bench/results/resample.json"))
    parser.add_argument(
        "--one", nargs=3, metavar=("ENGINE", "ORDER", "THREADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    shape = tuple(args.shape)
    if args.one:
        engine, order, threads = args.one
        print(json.dumps(measure(engine, int(order), shape, int(threads))))
        return
    cases = [
        ("medtailor", 1, 1),
        ("sitk", 1, 1),
        ("sitk", 1, 2),
        ("medtailor", 3, 1),
        ("sitk", 3, 1),
        ("sitk", 3, 2),
    ]
    results = []
    for engine, order, threads in cases:
        cmd = [
            sys.executable,
            __file__,
            "--shape",
            *map(str, shape),
            "--one",
            engine,
            str(order),
            str(threads),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"shape": shape, "spacing": SPACING, "results": results}, indent=2)
    )
    print("\n| engine | order | threads | seconds | peak RSS (MB) |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['engine']} | {r['order']} | {r['threads']} | {r['seconds']} | {r['peak_mb']} |"
        )


if __name__ == "__main__":
    main()
