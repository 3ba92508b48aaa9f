"""Parameter and multiply-accumulate counts (torch.utils.flop_counter)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass on a batch of one (FLOPs / 2: one MAC = multiply + add).

    The probe input is made on the model's own device and dtype (CUDA, or ``meta`` where
    nothing is computed), so counting works wherever the model lives.
    """
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    model.train(was_training)
    return counter.get_total_flops() // 2


def complexity(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "macs": count_macs(model, input_shape),
    }
