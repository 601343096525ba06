"""Supervised training loops shared by `unlearn train` and the fine-tuning baselines."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from .data import LabelledData
from .params import SaneParams
from .regularizers import REGULARIZERS, regularized_loss, regularizer_fields


class TrainConfig(SaneParams):
    """How `unlearn train` (and the `retrain` method) train a model from scratch."""
    epochs: int = Field(40, ge=1, description="Passes over the training data.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam (small nets) or sgd with momentum 0.9 and cosine decay (ResNets).")
    lr_schedule: Literal["auto", "constant", "cosine"] = Field(
        "auto", description="Learning-rate schedule over the epochs: auto is cosine decay for sgd and a constant rate for adam; "
        "cosine decays either to 0 by the last epoch (a converged end point rather than wherever the last step landed).",
    )
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    loss: Literal["auto", "mse", "l1"] = Field(
        "auto", description="Training loss: auto is the task's own (cross-entropy for classification, MSE for regression); "
        "regression may also train with l1 (mean absolute error) or mse.",
    )
    regularizer: Optional[Literal["gradient-restriction"]] = Field(
        None, description="Optional training regularizer (default none). gradient-restriction: loss + alpha * "
        "sum_tensors ||grad loss||_2 by double backprop, what the `iau` method assumes (IAU, Lolo1222/IAU train_model.py).",
    )
    regularizer_alpha: Optional[float] = Field(
        None, gt=0, description="The regularizer's weight; default 0.005 for gradient-restriction (IAU's train_model.py).",
    )

    @model_validator(mode="after")
    def _regularizer_alpha(self) -> "TrainConfig":
        if self.regularizer is None and self.regularizer_alpha is not None:
            raise ValueError("regularizer_alpha needs a regularizer (e.g. gradient-restriction)")
        if self.regularizer is not None and self.regularizer_alpha is None:
            self.regularizer_alpha = REGULARIZERS[self.regularizer]["alpha"]
        return self


def train_config(**options: object) -> TrainConfig:
    """A TrainConfig from command-line options (None = default); an invalid value is one line naming it."""
    from pydantic import ValidationError

    from .errors import UnlearnError
    from .params import field_and_message

    options = dict(options)
    regularizer, params = options.pop("regularizer", None), options.pop("regularizer_params", None) or {}
    try:
        options.update(regularizer_fields(regularizer, params))  # type: ignore[arg-type]
    except ValueError as e:
        raise UnlearnError(str(e)) from None
    try:
        return TrainConfig(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as e:
        name, msg = field_and_message(e.errors()[0])
        raise UnlearnError(f"--{name.replace('_', '-')}: {msg}; see unlearn train --help") from None


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    params = list(params)
    flat = [q for g in params for q in (g["params"] if isinstance(g, dict) else [g])]
    if not any(q.requires_grad for q in flat):  # torch said "empty parameter list", or failed in backward
        from .errors import MethodError

        raise MethodError("the model has no trainable parameters (requires_grad is False on every one, or it has none); this "
                          "trains the model's weights: unfreeze them in the model's code, or use rfa, which trains adapters")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def fit(
    model: nn.Module,
    data: LabelledData,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    progress: Optional[Callable[[str, int, int], None]] = None,
    task: str = "train",
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> nn.Module:
    """Training on `data` (in place) with `loss_fn` (default cross-entropy; `task` is the progress label), plus the
    config's regularizer if any; returns the model in eval mode."""
    from .precision import training_autocast

    # the gradient-restriction penalty differentiates the unscaled loss (autograd.grad), which fp16 would underflow:
    # with it, a card without bf16 trains fp32 (as the loops that do not scale the loss do)
    scaled = config.regularizer is None
    with training_autocast(device, scaled=scaled):
        return _fit(model, data, config, device, generator, progress, task, loss_fn or nn.functional.cross_entropy, scaled)


def _fit(model, data, config, device, generator, progress, task, loss_fn, scaled: bool = True) -> nn.Module:
    from .precision import ScaledSteps

    model.to(device).train()
    opt = make_optimizer(model.parameters(), config.optimizer, config.lr, config.weight_decay)
    steps = ScaledSteps(device, enabled=None if scaled else False)
    cosine = config.lr_schedule == "cosine" or (config.lr_schedule == "auto" and config.optimizer == "sgd")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs) if cosine else None
    for epoch in range(config.epochs):
        for x, y in data.batches(config.batch_size, shuffle=True, generator=generator):
            if len(y) == 1 < len(data):  # a last batch of one sample: BatchNorm cannot train on it (and it adds nothing)
                continue
            loss = loss_fn(model(x.to(device)), y.to(device))
            if config.regularizer is not None:
                loss = regularized_loss(config.regularizer, config.regularizer_alpha, loss, model.parameters())
            opt.zero_grad(set_to_none=True)
            steps.backward_and_step(loss, opt)
        if sched is not None:
            sched.step()
        if progress:
            progress(task, epoch + 1, config.epochs)
    return model.eval()


@contextlib.contextmanager
def single_sample_batchnorm() -> Iterator[None]:
    """While a method runs: a BatchNorm layer in training mode that gets a batch of ONE sample normalises it with its
    running statistics (as in eval mode, without updating them) instead of failing ("Expected more than 1 value per
    channel when training"). A forget set of one sample, or a method's own last batch, then trains as well as it can.
    Shuffled passes already avoid one-sample batches where they can (LabelledData.batches)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    switched: list[torch.nn.Module] = []

    def before(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, _BatchNorm) and module.training and args and getattr(args[0], "shape", (2,))[0] == 1:
            module.training = False
            switched.append(module)

    def after(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if switched and switched[-1] is module:
            switched.pop().training = True

    handles = register_module_forward_pre_hook(before), register_module_forward_hook(after)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in switched:
            m.training = True
