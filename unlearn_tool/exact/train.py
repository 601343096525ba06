"""Stage training for SISA and S3T, and the models a prefix of stages defines.

A stage's trained weights (its *component*) are a deterministic function of: the base weights, the components
of the earlier stages of its sequence, its data (the sequence's first i+1 slices minus excluded samples, in
index order), the run's seed and (shard, sequence, stage), and the parameters. Nothing else: no optimizer state
crosses stages (a fresh optimizer per stage), no other sequence's or shard's weights, no global RNG. So training
the same artifact again without some samples reproduces every stage whose data did not hold them, bit for bit
on the same CPU and library versions; and truncating a sequence leaves exactly the model its prefix trained.

S3T: one peft model per sequence with one LoRA adapter per stage position ("s0", "s1", ...) on that
position's layer group, top layers first; stage i trains adapter s_i and the classifier head with adapters
s_0..s_i active, and every other weight frozen. The whole network runs in eval mode during training, so
the frozen base (BatchNorm statistics included) never changes. A component holds the adapter's LoRA
matrices and the head after the stage. Adapters s_{i+1}.. are inactive, so they cannot influence stage i.

SISA: stage i continues the whole model from stage i-1 (stage 0 from the base) in train mode; a component is
the model's full state dict after the stage.
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import check_finite
from ..data import LabelledData
from ..errors import CheckpointError, MethodError
from ..lora import lora_capable_layers
from ..training import make_optimizer, single_sample_batchnorm
from .manifest import FIX
from .params import ExactParams, S3TParams, effective_epochs, stage_epochs

Progress = Callable[[str, int, int], None]
Tensors = dict[str, torch.Tensor]


def stage_seed(seed: int, shard: int, sequence: int, stage: int) -> int:
    """The seed of one stage's randomness (its LoRA initialisation and batch order); independent of every other stage."""
    return (seed * 1_000_003 + shard * 7_919 + sequence * 104_729 + stage * 15_485_863 + 1) % (2**63 - 1)


def s3t_layers(model: nn.Module, slices: int) -> tuple[str, list[list[str]]]:
    """(head, LoRA layer groups per stage position): the adaptable layers below the head, top first, split into
    `slices` contiguous groups (the top groups get the extra layer when they do not divide); with fewer layers
    than slices, position i adapts layer i mod L (each position its own adapter)."""
    capable = lora_capable_layers(model)
    if len(capable) < 2:
        raise MethodError("S3T needs a classifier head and at least one Linear/Conv2d layer below it; this model has "
                          f"{len(capable)} adaptable layer(s); use --exact sisa")
    head, body = capable[-1], capable[:-1][::-1]
    n = len(body)
    if n >= slices:
        sizes = [n // slices + (1 if g < n % slices else 0) for g in range(slices)]
        groups, start = [], 0
        for s in sizes:
            groups.append(body[start:start + s])
            start += s
        return head, groups
    return head, [[body[i % n]] for i in range(slices)]


def adapter(i: int) -> str:
    return f"s{i}"


class StackedLoRA:
    """A copy of the base with one LoRA adapter per S3T stage position; a prefix p activates adapters s0..s{p-1}."""

    def __init__(self, base: nn.Module, head: str, groups: list[list[str]], rank: int, alpha: float):
        from peft import LoraConfig, get_peft_model

        def config(layers: list[str]) -> LoraConfig:
            pattern = "^(" + "|".join(re.escape(n) for n in layers) + ")$"
            return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern, bias="none")

        self.head, self.groups = head, groups
        self.peft = get_peft_model(copy.deepcopy(base), config(groups[0]), adapter_name=adapter(0))
        for i in range(1, len(groups)):
            self.peft.add_adapter(adapter(i), config(groups[i]))
        self.model: nn.Module = self.peft.base_model.model  # the architecture with LoRA layers injected
        self.head_module = self.model.get_submodule(head)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def lora_names(self, i: int) -> list[str]:
        tag = f".{adapter(i)}."
        return [n for n, _ in self.model.named_parameters() if "lora_" in n and tag in n]

    def head_names(self) -> list[str]:
        return [f"{self.head}.{n}" for n, _ in self.head_module.named_parameters()]

    def init_adapter(self, i: int, generator: torch.Generator) -> None:
        """Stage i's starting LoRA: A from a Kaiming-uniform draw of its own generator, B = 0 (output unchanged)."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n in sorted(self.lora_names(i)):
                if ".lora_A." in n:  # drawn on the CPU (the generator's device), whatever device the model is on
                    w = torch.empty(params[n].shape, dtype=params[n].dtype)
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
                    params[n].copy_(w)
                else:
                    params[n].zero_()

    def set_prefix(self, p: int) -> None:
        """Adapters s0..s{p-1} active (p >= 1); the rest take no part in the forward pass."""
        self.peft.base_model.set_adapter([adapter(i) for i in range(max(1, p))], inference_mode=True)
        for q in self.model.parameters():
            q.requires_grad_(False)

    def component(self, i: int) -> Tensors:
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().cpu().clone().contiguous() for n in sorted(self.lora_names(i) + self.head_names())}

    def load_component(self, i: int, tensors: Tensors, head: bool, where: str) -> None:
        want = set(self.lora_names(i) + self.head_names())
        if set(tensors) != want:
            odd = sorted(set(tensors) ^ want)[:3]
            raise CheckpointError(f"{where} does not fit this architecture's stage {i} (keys {', '.join(odd)}); {FIX}")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in tensors.items():
                if n in self.head_names() and not head:
                    continue
                if tuple(t.shape) != tuple(params[n].shape):
                    raise CheckpointError(f"{where}: tensor {n} has shape {tuple(t.shape)}, the model wants {tuple(params[n].shape)}; {FIX}")
                params[n].copy_(t.to(params[n].dtype))




@dataclass
class StageResult:
    tensors: Tensors
    samples: int
    epochs: int
    sample_epochs: int
    steps: int = 0  # optimizer steps


@dataclass
class TrainCost:
    stages: int = 0
    sample_epochs: int = 0  # samples x epochs over every stage trained (one forward+backward each)
    wall_time_s: float = 0.0
    per_stage: list = field(default_factory=list)


def _fit(model: nn.Module, forward: nn.Module, params: list[nn.Parameter], data: LabelledData, epochs: int, p: ExactParams,
         generator: torch.Generator, device: torch.device, train_mode: bool) -> None:
    model.train(train_mode)
    if len(data) == 0 or not params:
        model.eval()
        return
    import contextlib

    from ..precision import training_autocast

    opt = make_optimizer(params, p.optimizer, p.lr)
    # a stage of one sample (many shards, or samples excluded by deletions) is one batch of one: in training mode
    # BatchNorm normalises it with its running statistics instead of failing
    guard = single_sample_batchnorm() if train_mode else contextlib.nullcontext()
    with training_autocast(device), guard:
        for _ in range(epochs):
            for x, y in data.batches(p.batch_size, shuffle=True, generator=generator):
                loss = F.cross_entropy(forward(x.to(device)), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()


def train_sequence(
    method: str,
    p: ExactParams,
    base: nn.Module,
    make_model: Callable[[], nn.Module],
    train: LabelledData,
    stage_indices: list[list[int]],
    seed: int,
    shard: int,
    sequence: int,
    start: int,
    earlier: list[Tensors],
    device: torch.device,
    head: Optional[str] = None,
    groups: Optional[list[list[str]]] = None,
    progress: Optional[Callable[[], None]] = None,
) -> list[StageResult]:
    """Train stages start..R-1 of one sequence; `earlier` holds the components of stages 0..start-1."""
    r = len(stage_indices)
    epochs = stage_epochs(p, r)
    out: list[StageResult] = []
    if method == "s3t":
        assert isinstance(p, S3TParams) and head is not None and groups is not None
        stacked = StackedLoRA(base, head, groups, p.rank, p.alpha)
        for j, tensors in enumerate(earlier):
            stacked.load_component(j, tensors, head=(j == start - 1), where=f"component (shard {shard}, sequence {sequence}, stage {j})")
        stacked.model.to(device)
        for i in range(start, r):
            gen = torch.Generator().manual_seed(stage_seed(seed, shard, sequence, i))
            stacked.init_adapter(i, gen)
            stacked.set_prefix(i + 1)
            trainable = dict(stacked.model.named_parameters())
            params = [trainable[n] for n in sorted(stacked.lora_names(i) + stacked.head_names())]
            for q in params:
                q.requires_grad_(True)
            data = train.subset(stage_indices[i])
            e = effective_epochs(p, epochs[i], len(data))
            _fit(stacked.model, stacked.model, params, data, e, p, gen, device, train_mode=False)
            for q in params:
                q.requires_grad_(False)
            out.append(StageResult(stacked.component(i), len(data), e, len(data) * e, -(-len(data) // p.batch_size) * e))
            if progress:
                progress()
        return out
    model = copy.deepcopy(base) if start == 0 else _load_full(make_model(), earlier[start - 1], f"component (shard {shard}, sequence {sequence}, stage {start - 1})")
    model.to(device)
    for i in range(start, r):
        gen = torch.Generator().manual_seed(stage_seed(seed, shard, sequence, i))
        data = train.subset(stage_indices[i])
        params = [q for q in model.parameters()]
        for q in params:
            q.requires_grad_(True)
        e = effective_epochs(p, epochs[i], len(data))
        _fit(model, model, params, data, e, p, gen, device, train_mode=True)
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        out.append(StageResult(state, len(data), e, len(data) * e, -(-len(data) // p.batch_size) * e))
        if progress:
            progress()
    return out


def _load_full(model: nn.Module, tensors: Tensors, where: str) -> nn.Module:
    from ..checkpoint import mismatches

    diffs = mismatches(model, tensors)
    if diffs:
        raise CheckpointError(f"{where} does not fit this architecture ({'; '.join(diffs[:3])}); {FIX}")
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in tensors.items()}, strict=True)
    return model


def serving_model(method: str, p: ExactParams, base: nn.Module, make_model: Callable[[], nn.Module], components: list[Tensors],
                  device: torch.device, head: Optional[str], groups: Optional[list[list[str]]], where: str) -> nn.Module:
    """The model a prefix of stages defines (components = stages 0..p-1, p >= 1), in eval mode."""
    for j, t in enumerate(components):
        check_finite(t, f"{where} stage {j}")
    if method == "s3t":
        assert isinstance(p, S3TParams) and head is not None and groups is not None
        stacked = StackedLoRA(base, head, groups, p.rank, p.alpha)
        for j, tensors in enumerate(components):
            stacked.load_component(j, tensors, head=(j == len(components) - 1), where=f"{where} stage {j}")
        stacked.set_prefix(len(components))
        return stacked.model.to(device).eval()
    return _load_full(make_model(), components[-1], f"{where} stage {len(components) - 1}").to(device).eval()


class EnsembleModule(nn.Module):
    """The served model: the surviving shards' models; output = mean of their logits, a vote, or a weighted mean.

    Vote output: log((votes + mean softmax) / (shards + 1)), so the argmax is the majority class with ties
    broken by the mean probability, and the audit's probability-based figures stay defined. Weighted: the logits'
    mean weighted by `weights` (per member, e.g. the samples its served prefix was trained on), so a shard cut
    back to a short prefix by deletions counts less than one still serving its whole data."""

    def __init__(self, members: list[nn.Module], aggregation: str = "mean", shards: Optional[list[int]] = None,
                 weights: Optional[list[float]] = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.aggregation = aggregation
        self.shards = list(shards or range(len(members)))
        if aggregation == "weighted":
            if weights is None or len(weights) != len(members) or not all(w >= 0 for w in weights) or sum(weights) <= 0:
                raise MethodError(f"weighted aggregation needs one non-negative weight per member, not all zero (got {weights})")
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([m(x) for m in self.members])  # (shards, batch, classes)
        if self.aggregation == "mean":
            return outs.mean(0)
        if self.aggregation == "weighted":
            w = torch.tensor(self.weights, dtype=outs.dtype, device=outs.device)
            return (outs * (w / w.sum())[:, None, None]).sum(0)
        votes = F.one_hot(outs.argmax(-1), outs.shape[-1]).sum(0).to(outs.dtype)
        probs = outs.softmax(-1).mean(0)
        return torch.log((votes + probs) / (len(self.members) + 1))


def elapsed(start: float) -> float:
    return time.perf_counter() - start
