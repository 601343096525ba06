"""SSD: Selective Synaptic Dampening (Foster et al. AAAI 2024). No training, no optimizer.

Importance of a parameter on a data set = mean over batches of the squared
batch-mean gradient of the cross-entropy (a diagonal "Fisher" proxy). With I_f
on Df and I_D on the full training set D:

    selected = I_f > alpha * I_D
    beta     = min(lambda * I_D / I_f, 1)
    theta[selected] *= beta[selected]

I_D depends only on (weights, D, batch size), so it is cached on disk per
checkpoint and data set (safetensors, atomic write, verified on read; never
unpickled). Algorithm, defaults and measured figures: docs/methods.md; Foster et al. AAAI 2024 (if-loops/selective-synaptic-dampening).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data import LabelledData, fingerprint
from ..errors import OutputError
from ..params import IS_PATH
from ..precision import resolved
from .base import MethodOutput, MethodParams, UnlearnContext, register_method
from .common import task_loss, task_of

CACHE_FORMAT = "unlearn-ssd-importance/v2"  # v2: batches of even size
CACHE_ENV = "UNLEARN_CACHE_DIR"
D_SHUFFLE_SEED = 20240101
LARGE_MODEL_PARAMS = 1_000_000  # at this size and above the published alpha = 10 applies
SMALL_MODEL_ALPHA = 50.0  # fixed, so I_D is a function of (weights, data, batch size) only and can be cached


class SSDParams(MethodParams):
    alpha: Optional[float] = Field(
        None, gt=0, description="Selection weighting: dampen a parameter when I_f > alpha * I_D. Default (auto): the published 10 "
        f"(ResNet-18/ViT) for models with >= {LARGE_MODEL_PARAMS:,} parameters, else {SMALL_MODEL_ALPHA:g} (the published PinsFace value; "
        "measured on the digits MLP, alpha 10 dampens ~29% of its weights and drops retain accuracy to ~0.60)."
    )
    dampening: float = Field(1.0, gt=0, description="Dampening constant lambda: beta = min(lambda * I_D / I_f, 1) (official: 1).")
    batch_size: Optional[int] = Field(
        None, ge=1, description="Batch size of both importance passes (must be the same for Df and D). "
        "Default: 64 for class unlearning, 128 for sample unlearning (the official runs)."
    )
    forget_batches: int = Field(
        48, ge=1, description="Df's importance is averaged over at least this many batches: a small Df is reshuffled into new "
        "batches until it has. In the published batching (64/64/18, read once), class 3 of the digits MLP kept forget accuracy 0.00, 0.99, 0.78 "
        "or 0.73 by the seed alone; with 48, 0.00-0.01 on each (benchmarks/ssd_seeds.py). [ours]",
    )
    use_cache: bool = Field(True, description="Reuse (and store) the full-data importances I_D for this checkpoint, data and batch size.")
    cache_dir: Optional[str] = Field(
        None, json_schema_extra=IS_PATH, description="Cache folder. Default: $UNLEARN_CACHE_DIR/ssd if that variable is set, else ~/.cache/unlearn/ssd."
    )


# ---------------------------------------------------------------- importances

def even_batch_size(n: int, batch_size: int) -> int:
    """The batch size that splits n samples into as many batches as `batch_size` would, of (nearly) equal sizes: the
    importance is a mean of squared batch-mean gradients, whose noise part scales with 1 / batch size, so a small last
    batch (18 of Df's 146 samples at 64) weighs in with over three times the noise of the others."""
    batches = max(1, math.ceil(n / batch_size))
    return max(1, math.ceil(n / batches))


def importances(model: nn.Module, data: LabelledData, batch_size: int, device: torch.device,
                generator: Optional[torch.Generator], loss_fn=None, min_batches: int = 1) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared batch-mean gradient of the loss (CE; regression: the task's MSE), per parameter
    (eval mode; fp32 on the model's device). Batches of even size (even_batch_size); with a generator, the data are
    reshuffled into new batches until at least `min_batches` were read (a forget set of three batches gives an
    estimate that depends on how its samples fell into them)."""
    loss_fn = loss_fn or F.cross_entropy
    was_training = model.training
    model.eval()
    params = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    acc = {n: torch.zeros_like(q, dtype=torch.float32) for n, q in params}
    size = even_batch_size(len(data), batch_size)
    per_pass = max(1, math.ceil(len(data) / size))
    passes = max(1, math.ceil(min_batches / per_pass)) if generator is not None and per_pass > 1 else 1  # one batch: the same each pass
    n_batches = 0
    for _ in range(passes):
        for x, y in data.batches(size, shuffle=generator is not None, generator=generator):
            model.zero_grad(set_to_none=True)
            loss_fn(model(x.to(device)), y.to(device)).backward()
            for n, q in params:
                if q.grad is not None:
                    acc[n] += q.grad.detach().float() ** 2
            n_batches += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: a / max(n_batches, 1) for n, a in acc.items()}


@torch.no_grad()
def dampen(model: nn.Module, imp_forget: dict[str, torch.Tensor], imp_full: dict[str, torch.Tensor],
           alpha: float, dampening: float) -> tuple[int, int]:
    """Apply SSD in place; returns (dampened parameter entries, total entries considered)."""
    changed = total = 0
    for n, q in model.named_parameters():
        if n not in imp_forget:
            continue
        i_f = imp_forget[n].to(q.device)
        i_d = imp_full[n].to(q.device)
        selected = i_f > alpha * i_d  # never true where i_f == 0
        safe_f = torch.where(i_f > 0, i_f, torch.ones_like(i_f))  # guard 0/0 (those entries are not selected anyway)
        beta = torch.clamp(dampening * i_d / safe_f, max=1.0)
        q[selected] = (q[selected].float() * beta[selected]).to(q.dtype)
        changed += int(selected.sum())
        total += q.numel()
    return changed, total


# ---------------------------------------------------------------- cache

def _bytes_of(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every state_dict entry (name, dtype, shape, raw bytes), in name order."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}\n".encode())
        h.update(_bytes_of(v))
    return h.hexdigest()


def data_fingerprint(data: LabelledData) -> str:
    """The data's fingerprint (data.fingerprint): part of the cache key."""
    return fingerprint(data)


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "unlearn") / "ssd"


def cache_key(weights_sha: str, data_sha: str, batch_size: int, task: str = "classification", precision: str = "fp32") -> str:
    extra = "" if task == "classification" else f"|task={task}"  # classification keys stay what they were
    extra += "" if precision == "fp32" else f"|precision={precision}"  # I_D from a bf16 pass on a card differs from fp32's
    return hashlib.sha256(f"{CACHE_FORMAT}|{weights_sha}|{data_sha}|bs={batch_size}|seed={D_SHUFFLE_SEED}{extra}".encode()).hexdigest()


def _content_sha(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(f"{k}|{tensors[k].dtype}|{tuple(tensors[k].shape)}\n".encode())
        h.update(_bytes_of(tensors[k]))
    return h.hexdigest()


def load_cached(path: Path, key: str, model: nn.Module) -> tuple[Optional[dict[str, torch.Tensor]], str]:
    """The cached I_D if the file is intact and belongs to this key and model, else (None, why)."""
    from safetensors import safe_open

    if not path.is_file():
        return None, "miss"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any unreadable file is simply not trusted
        return None, f"unreadable ({type(e).__name__})"
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
        return None, "key mismatch"
    expected = {n: q for n, q in model.named_parameters() if q.requires_grad}
    if set(tensors) != set(expected):
        return None, "parameter names differ"
    for n, q in expected.items():
        t = tensors[n]
        if tuple(t.shape) != tuple(q.shape) or t.dtype != torch.float32:
            return None, f"shape/dtype of {n} differs"
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            return None, f"invalid values in {n}"
    if meta.get("content_sha256") != _content_sha(tensors):
        return None, "content checksum mismatch"
    return tensors, "hit"


def store_cached(path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write atomically (the tool's one atomic writer: temporary file in the same folder, then rename)."""
    from ..checkpoint import replace_atomically, save_canonical

    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": CACHE_FORMAT, "key": key, "content_sha256": _content_sha(cpu)}
    replace_atomically(path, lambda tmp: save_canonical(cpu, tmp, meta), fix=f"set cache_dir or {CACHE_ENV}")


# ---------------------------------------------------------------- method

def run(ctx: UnlearnContext, p: SSDParams) -> MethodOutput:
    device = ctx.device
    model = ctx.student()
    loss_fn = task_loss(ctx)  # CE, or the regression task's MSE: the Fisher proxy of the loss the model was trained with
    bs = p.batch_size or (64 if ctx.scenario in ("class", "range") else 128)
    n_params = sum(q.numel() for q in model.parameters())
    alpha = p.alpha if p.alpha is not None else (10.0 if n_params >= LARGE_MODEL_PARAMS else SMALL_MODEL_ALPHA)
    info: dict = {"alpha": alpha, "dampening": p.dampening, "batch_size": bs, "cache": "disabled"}

    imp_full = None
    path = None
    if p.use_cache:
        cache_dir = Path(p.cache_dir).expanduser() if p.cache_dir else default_cache_dir()
        key = cache_key(weights_fingerprint(ctx.original), data_fingerprint(ctx.splits.train), bs, task_of(ctx).name,
                        resolved(ctx.device))
        path = cache_dir / f"{key}.safetensors"
        imp_full, status = load_cached(path, key, model)
        info["cache"] = status
        info["cache_file"] = str(path)
        if status not in ("hit", "miss"):
            ctx.log.append(f"ssd: ignored the cached importances at {path} ({status}); recomputed them")
    if imp_full is None:
        imp_full = importances(model, ctx.splits.train, bs, device, torch.Generator().manual_seed(D_SHUFFLE_SEED), loss_fn)
        ctx.report("ssd: importance on D", 1, 2)
        if path is not None:
            try:
                store_cached(path, key, imp_full)
                info["cache_written"] = True
            except (OSError, OutputError) as e:
                info["cache_written"] = False
                why = e.strerror if isinstance(e, OSError) else str(e)
                ctx.log.append(f"ssd: could not write the importance cache {path} ({why}); set cache_dir or {CACHE_ENV}")
    imp_forget = importances(model, ctx.forget, bs, device, ctx.generator(41), loss_fn, min_batches=p.forget_batches)
    ctx.report("ssd: importance on Df", 2, 2)
    changed, total = dampen(model, imp_forget, imp_full, alpha, p.dampening)
    info.update({"dampened_params": changed, "total_params": total, "dampened_fraction": round(changed / max(total, 1), 6)})
    return MethodOutput(model=model.eval(), info=info)


register_method("ssd", SSDParams, run,
                summary="SSD: dampen the weights far more important to Df than to D (no training; D importances cached).",
                reference="Foster et al. AAAI 2024, arXiv 2308.07707 (if-loops/selective-synaptic-dampening)",
                tasks=("classification", "regression"), scenarios=("class", "sample", "range"))
