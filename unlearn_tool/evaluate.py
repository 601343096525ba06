"""Batched inference: logits, probabilities and accuracies (streamed over batches)."""

from __future__ import annotations

import torch
from torch import nn

from .data import LabelledData


@torch.no_grad()
def predict_logits(model: nn.Module, data: LabelledData, device: torch.device, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and labels (N,) on CPU, in data order, in eval mode."""
    was_training = model.training
    model.eval()
    outs, ys = [], []
    for x, y in data.batches(batch_size):
        outs.append(model(x.to(device)).float().cpu())
        ys.append(y)
    model.train(was_training)
    if not outs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(ys)


def accuracy(model: nn.Module, data: LabelledData, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1]; NaN for an empty set."""
    if len(data) == 0:
        return float("nan")
    logits, y = predict_logits(model, data, device, batch_size)
    return float((logits.argmax(1) == y).float().mean())
