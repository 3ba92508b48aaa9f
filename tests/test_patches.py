"""Cropping with context, resampling to the patch size, and the memory-mapped store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtailor.patches.crops import context_region, extract_patch
from medtailor.patches.store import INDEX, PatchStore, PatchWriter


def test_context_region_grows_and_squares():
    low, high = context_region(np.array([10, 20, 30, 60], float), context=0.5, square=False)
    np.testing.assert_allclose(low, [0, 0])
    np.testing.assert_allclose(high, [40, 80])
    low, high = context_region(np.array([10, 20, 30, 60], float), context=0.5, square=True)
    np.testing.assert_allclose(high - low, [80, 80])
    np.testing.assert_allclose((low + high) / 2, [20, 40])


def test_patch_samples_the_region_linearly_and_repeats_the_image_border_outside():
    image = np.add.outer(np.arange(100.0), np.zeros(50)) + 3.0  # value = x index + 3
    patch = extract_patch(image, np.array([10.0, 0.0]), np.array([20.0, 10.0]), (10, 10))
    # Output pixel j covers [10 + j, 11 + j): its centre samples x = 10 + j.
    np.testing.assert_allclose(patch[:, 0], np.arange(10, 20) + 3.0, atol=1e-5)
    low, high = np.array([-10.0, 0.0]), np.array([10.0, 10.0])
    # Default: the border column (x = 0, value 3) continues outside; no dark band that
    # would tell a classifier "this candidate is at the image border".
    outside = extract_patch(image, low, high, (20, 10))
    np.testing.assert_allclose(outside[:10], 3.0, atol=1e-5)
    assert outside[15, 5] == pytest.approx(8.0)
    zero = extract_patch(image, low, high, (20, 10), padding="zero")
    assert (zero[:9] == 0).all() and zero[15, 5] == pytest.approx(8.0)


def test_downsampling_is_antialiased():
    checker = (np.indices((128, 128)).sum(axis=0) % 2).astype(np.float32)
    patch = extract_patch(checker, np.array([0.0, 0.0]), np.array([128.0, 128.0]), (16, 16))
    assert patch[2:-2, 2:-2].std() < 0.02 and patch[8, 8] == pytest.approx(0.5, abs=0.02)


def test_3d_patch():
    volume = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    low, high = np.array([5.0, 5.0, 5.0]), np.array([13.0, 13.0, 13.0])
    patch = extract_patch(volume, low, high, (8, 8, 8))
    np.testing.assert_allclose(patch, volume[5:13, 5:13, 5:13], atol=1e-6)


def test_store_round_trip_is_memory_mapped(tmp_path):
    counts = {("radiograph", "train"): 5, ("radiograph", "test"): 2}
    writer = PatchWriter(tmp_path, counts, {"radiograph": (4, 4)}, "float16")
    rows = []
    for (kind, split), n in counts.items():
        for row in range(n):
            writer.write(kind, split, row, np.full((4, 4), row / 10))
            rows.append({"patch_id": f"{split}{row}", "kind": kind, "split": split, "row": row})
    writer.close()
    pd.DataFrame(rows).to_parquet(tmp_path / INDEX)
    store = PatchStore(tmp_path)
    array = store.array("radiograph", "train")
    assert isinstance(array, np.memmap) and array.dtype == np.float16 and array.shape == (5, 4, 4)
    batches = list(store.iter_batches("radiograph", "train", batch_size=2))
    assert [len(part) for _, part in batches] == [2, 2, 1]
    np.testing.assert_allclose(batches[1][0][:, 0, 0], [0.2, 0.3], atol=1e-3)
