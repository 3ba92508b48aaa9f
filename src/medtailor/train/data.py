"""Patch datasets for classifier training, read from the memory-mapped patch store."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from medtailor.patches.store import PatchStore
from medtailor.targets import target_columns


def augmentation(spec: dict[str, Any]) -> v2.Compose | None:
    steps: list[Any] = []
    if spec.get("hflip"):
        steps.append(v2.RandomHorizontalFlip())
    if spec.get("vflip"):
        steps.append(v2.RandomVerticalFlip())
    degrees = float(spec.get("rotate_degrees", 0))
    scale = spec.get("scale")
    if degrees or scale:
        steps.append(v2.RandomAffine(degrees=degrees, scale=tuple(scale) if scale else None))
    return v2.Compose(steps) if steps else None


def balanced_indices(
    labels: np.ndarray, max_negatives_per_positive: float | None, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of one epoch: every positive and at most ``max_negatives_per_positive``
    negatives per positive, drawn without replacement (all of them when None or when there
    are fewer). Without a positive there is nothing to balance against: every index."""
    labels = np.asarray(labels)
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels != 1)
    if max_negatives_per_positive is None or len(positives) == 0:
        return np.arange(len(labels))
    keep = min(len(negatives), int(np.ceil(max_negatives_per_positive * len(positives))))
    chosen = rng.choice(negatives, size=keep, replace=False) if keep < len(negatives) else negatives
    return np.sort(np.concatenate([positives, chosen]))


class PatchDataset(Dataset):
    """2D patches of one split as (tensor C x H x W in [0, 1], target): the label (class
    index), or for a multi-label store the vector of findings (1, 0, -1 unknown).

    ``labelled_only`` drops ignored (-1) candidates, as training and validation do.
    """

    def __init__(
        self,
        store: PatchStore,
        split: str,
        input_size: int,
        channels: int,
        labelled_only: bool,
        augment: dict[str, Any] | None = None,
        kind: str = "radiograph",
    ) -> None:
        rows = store.rows(kind, split)
        if labelled_only:
            rows = rows[rows["label"] >= 0]
        self.rows = rows.reset_index(drop=True)
        self.array = (
            store.array(kind, split) if len(rows) else np.zeros((0, input_size, input_size))
        )
        self.positions = self.rows["row"].to_numpy()
        self.labels = torch.tensor(self.rows["label"].clip(lower=0).to_numpy(), dtype=torch.long)
        self.task = store.task()
        # What the model learns: the label, or one column per finding (-1 unknown).
        self.targets = (
            torch.tensor(self.rows[target_columns(self.task)].to_numpy(), dtype=torch.long)
            if self.task["task"] == "multilabel"
            else self.labels
        )
        self.input_size = input_size
        self.channels = channels
        self.kind = kind
        self.transform = augmentation(augment) if augment else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        patch = torch.from_numpy(np.array(self.array[self.positions[index]], dtype=np.float32))
        # Stored (x, y); torch images are (H=y, W=x).
        image = patch.T[None]
        if image.shape[-1] != self.input_size or image.shape[-2] != self.input_size:
            image = F.interpolate(
                image[None],
                size=(self.input_size,) * 2,
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
        if self.transform is not None:
            image = self.transform(image)
        return image.expand(self.channels, -1, -1).contiguous(), self.targets[index]

    def frame(self) -> pd.DataFrame:
        return self.rows
