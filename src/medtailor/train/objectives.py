"""Loss, probabilities and validation AUC for each classification task (``medtailor.targets``).

Binary and multi-class tasks train with cross-entropy over softmax outputs (binary keeps
two logits, so checkpoints of detector patches are unchanged); multi-label tasks with one
sigmoid per finding and a binary cross-entropy in which unknown targets (-1) weigh
nothing, so they move neither the loss nor its gradient. The validation AUC is the mean
of the per-class (one-vs-rest) or per-finding AUCs that are defined, unknowns left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medtailor.targets import UNKNOWN


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")


def class_aucs(targets: np.ndarray, probs: np.ndarray, task: dict[str, Any]) -> list[float]:
    """AUC per class (multi-class: one-vs-rest) or per finding (unknowns left out); a
    binary task has one, of class 1. NaN where a class has no positive or no negative."""
    targets, probs = np.asarray(targets), np.asarray(probs)
    if task["task"] == "binary":
        return [auc(targets, probs)]
    if task["task"] == "multiclass":
        return [auc(targets == k, probs[:, k]) for k in range(probs.shape[1])]
    values = []
    for k in range(probs.shape[1]):
        known = targets[:, k] != UNKNOWN
        values.append(auc(targets[known, k], probs[known, k]))
    return values


def mean_auc(targets: np.ndarray, probs: np.ndarray, task: dict[str, Any]) -> float:
    """The mean of the defined per-class AUCs (NaN when none is defined)."""
    values = [v for v in class_aucs(targets, probs, task) if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def has_defined_auc(targets: np.ndarray, task: dict[str, Any]) -> bool:
    """Whether any class's AUC can be computed on these targets."""
    targets = np.asarray(targets)
    if task["task"] == "multilabel":
        return any(
            len(np.unique(targets[targets[:, k] != UNKNOWN, k])) == 2
            for k in range(targets.shape[1])
        )
    return len(np.unique(targets)) >= 2


def probabilities(logits: torch.Tensor, task: dict[str, Any]) -> torch.Tensor:
    """Binary: P(class 1), shape (N,); multi-class: softmax (N, K); multi-label: sigmoid."""
    logits = logits.float()
    if task["task"] == "multilabel":
        return torch.sigmoid(logits)
    probs = torch.softmax(logits, dim=1)
    return probs[:, 1] if task["task"] == "binary" else probs


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy per finding, averaged over the known targets only."""
    known = targets != UNKNOWN
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), targets.clamp(min=0).float(), pos_weight=pos_weight, reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)


def class_weights(targets: torch.Tensor, task: dict[str, Any], mode: str) -> torch.Tensor | None:
    """Balanced weights: per class (softmax tasks, N / (K n_k)), or per finding the ratio of
    known negatives to positives (multi-label, BCE's ``pos_weight``); None for ``none``."""
    if mode == "none":
        return None
    if task["task"] == "multilabel":
        positives = (targets == 1).sum(dim=0).float()
        negatives = (targets == 0).sum(dim=0).float()
        return negatives.clamp(min=1) / positives.clamp(min=1)
    classes = 2 if task["task"] == "binary" else len(task["classes"])
    counts = torch.bincount(targets, minlength=classes).float().clamp(min=1)
    return counts.sum() / (classes * counts)


def training_loss(task: dict[str, Any], weights: torch.Tensor | None) -> torch.nn.Module | Any:
    """The loss a training step minimises, as a callable of (logits, targets)."""
    if task["task"] == "multilabel":
        return lambda logits, targets: masked_bce_with_logits(logits, targets, weights)
    return torch.nn.CrossEntropyLoss(weight=weights)


def validation_loss(targets: np.ndarray, probs: np.ndarray, task: dict[str, Any]) -> float:
    """Cross-entropy of the predicted probabilities (unknown multi-label targets left out)."""
    p = torch.as_tensor(np.asarray(probs, np.float64)).clamp(1e-7, 1 - 1e-7)
    t = torch.as_tensor(np.asarray(targets))
    if task["task"] == "multiclass":
        return float(F.nll_loss(p.log(), t.long()))
    if task["task"] == "multilabel":
        known = t != UNKNOWN
        losses = F.binary_cross_entropy(p, t.clamp(min=0).double(), reduction="none")
        return float((losses * known).sum() / known.sum().clamp(min=1))
    return float(F.binary_cross_entropy(p, t.double()))
