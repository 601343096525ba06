"""Exact training on architectures beyond the MLP: BatchNorm layers and stages of very few samples."""

from __future__ import annotations

import torch
from torch import nn

from unlearn_tool.data import LabelledData
from unlearn_tool.exact.params import SISAParams
from unlearn_tool.exact.train import train_sequence


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_a_sisa_stage_of_one_sample_trains_a_batchnorm_model():
    """Many shards (or a deletion retrained with --retrain-affected) can leave a SISA stage one sample: its single
    batch used to crash BatchNorm in training mode ("Expected more than 1 value per channel", exit 1). It now
    normalises that sample with the running statistics, trains, and the next stage's larger batches update them."""
    data = LabelledData.from_tensors(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    base = _bn_model().eval()
    p = SISAParams(shards=1, slices=2, epochs=3, batch_size=4)
    out = train_sequence("sisa", p, base, _bn_model, data, [[2], [0, 1, 2, 3, 4]], 0, 0, 0, 0, [], torch.device("cpu"))
    assert [r.samples for r in out] == [1, 5]
    first, second = out[0].tensors, out[1].tensors
    assert not torch.equal(first["0.weight"], base.state_dict()["0.weight"])  # the one-sample stage trained
    assert torch.equal(first["1.running_mean"], base.state_dict()["1.running_mean"])  # one sample left the statistics alone
    assert not torch.equal(second["1.running_mean"], first["1.running_mean"])  # real batches update them
