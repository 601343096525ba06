"""Training-time regularizers that some unlearning methods rely on (`unlearn train --regularizer NAME`).

gradient-restriction (IAU, reference notes §4): the loss becomes

    loss + alpha * sum over parameter tensors of ||d loss / d theta_tensor||_2

computed by double backprop (`create_graph=True`), so a training step costs about two to three plain
steps. A model trained this way has small, smooth per-batch gradients, which is what makes IAU's
one-step influence approximation accurate.

This module is the library side of the option: `TrainConfig.regularizer` / `regularizer_alpha`
select it, `training.fit` applies it through `regularized_loss`, `regularizer_fields` turns the
CLI's `--regularizer NAME --param key=value` into those fields, `regularizer_metadata` gives the
fields a checkpoint records, and `checkpoint_regularizer` reads them back from a checkpoint's raw
safetensors metadata.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional

import torch

GRADIENT_RESTRICTION = "gradient-restriction"
# name -> {parameter: default}; the default's source is in the description below
REGULARIZERS: dict[str, dict[str, float]] = {GRADIENT_RESTRICTION: {"alpha": 0.005}}
DESCRIPTIONS = {
    GRADIENT_RESTRICTION: "loss + alpha * sum_tensors ||grad_theta loss||_2 by double backprop; alpha 0.005 "
                          "(IAU's train_model.py, model_fix_flag=1). Needed by the `iau` method.",
}
META_KEY = "unlearn.train_config"  # where pipeline.train_checkpoint stores TrainConfig.model_dump() (as JSON)


def gradient_norm_penalty(loss: torch.Tensor, params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """sum over tensors of ||d loss / d p||_2, differentiable (create_graph) so it can be minimised."""
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    terms = [g.norm(2) for g in grads if g is not None]
    return torch.stack(terms).sum() if terms else loss.new_zeros(())


def regularized_loss(name: Optional[str], alpha: Optional[float], loss: torch.Tensor,
                     params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """`loss` plus the named regularizer's term (unchanged when `name` is None)."""
    if name is None:
        return loss
    if name == GRADIENT_RESTRICTION:
        a = REGULARIZERS[name]["alpha"] if alpha is None else alpha
        return loss + a * gradient_norm_penalty(loss, params)
    raise ValueError(f"unknown regularizer {name!r}; known: {', '.join(REGULARIZERS)}")


def regularizer_fields(name: Optional[str], params: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The TrainConfig fields for `--regularizer NAME [--param alpha=X]` (ValueError names what is wrong).

    {} when `name` is None (then no --param is allowed).
    """
    params = dict(params or {})
    if name is None:
        if params:
            raise ValueError(f"--param {', '.join(params)} needs --regularizer; regularizers: {', '.join(REGULARIZERS)}")
        return {}
    if name not in REGULARIZERS:
        raise ValueError(f"--regularizer {name}: unknown; choose one of {', '.join(REGULARIZERS)}")
    unknown = sorted(set(params) - set(REGULARIZERS[name]))
    if unknown:
        raise ValueError(f"--param {unknown[0]}: {name} takes {', '.join(REGULARIZERS[name])}")
    alpha = float(params.get("alpha", REGULARIZERS[name]["alpha"]))
    if not alpha > 0:
        raise ValueError(f"--param alpha={alpha}: must be > 0")
    return {"regularizer": name, "regularizer_alpha": alpha}


def regularizer_metadata(config: Any) -> dict[str, Any]:
    """The fields a checkpoint records about its training regularizer ({} when none), from a TrainConfig."""
    name = getattr(config, "regularizer", None)
    if name is None:
        return {}
    return {"regularizer": name, "regularizer_alpha": getattr(config, "regularizer_alpha", None)}


def checkpoint_regularizer(metadata: Optional[Mapping[str, str]]) -> Optional[dict[str, Any]]:
    """How a checkpoint was trained, from its raw safetensors metadata ({"unlearn.train_config": "{json}"}).

    Returns {"regularizer": name-or-None, "regularizer_alpha": ...} when the checkpoint records its
    train_config, or None when it does not say (not trained by `unlearn train`, or metadata not given).
    Parsed train_config dicts (already decoded) are accepted too.
    """
    if not metadata:
        return None
    raw = metadata.get(META_KEY, metadata.get("train_config"))
    if raw is None:
        return None
    try:
        cfg = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(cfg, dict):
        return None
    return {"regularizer": cfg.get("regularizer"), "regularizer_alpha": cfg.get("regularizer_alpha")}
