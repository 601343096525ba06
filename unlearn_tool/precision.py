"""Numeric precision of training passes on an accelerator: `--precision auto|bf16|fp32`.

On CUDA, `auto` (the default) runs the method's and `unlearn train`'s forward passes under
`torch.autocast` in bfloat16 where the card supports it (Ampere and newer): about twice the matmul
throughput and half the activation memory, with fp32 weights, fp32 optimizer state and fp32 losses
(autocast keeps reductions such as cross-entropy and softmax in fp32). bfloat16 has fp32's exponent
range, so no loss scaling is needed.

On a card without bfloat16 (before Ampere), `auto` means float16 with dynamic loss scaling
(torch.amp.GradScaler): fp16's narrow exponent range underflows small gradients unless the loss is
scaled up before backward and the gradients unscaled before the step (a step with inf/NaN gradients is
skipped and the scale lowered). Only training loops that step through `ScaledSteps` get fp16: `unlearn
train` (training.fit, which retrain and fine-tuning use too) and the LoRA methods (MethodSpecEntry.
loss_scaling); every other method runs fp32 on such a card rather than unscaled fp16, and so does `unlearn train
--regularizer gradient-restriction`, whose penalty differentiates the unscaled loss.
`--precision fp32` turns autocast off everywhere.

Regression requests run fp32 under `auto`: bf16 keeps 8 significant bits, so a model's outputs near 2000 come in
steps of 8 and targets of 2000 +- 10 collapse to three values (the tool does not standardise a user's targets).
`--precision bf16` still forces it.

CPU and MPS always run fp32 (CPU autocast is slower than fp32 for these models). Evaluation passes run in fp32 on
every device, so reported figures do not depend on the card: the summary and the audit, which run outside any
autocast, and, inside a method's pass, its own checks, teacher targets, solvers and merges (`full_precision`).

The autocast context is entered once around a whole training pass (every step of a method's run), so its weight
cache is OFF: with the cache on, the low-precision copy of each weight made at the first forward is reused by every
later forward of the pass until the context exits, so the model never sees its own updates and the optimizer keeps
pushing the weights along the first step's gradient (a trained model at chance accuracy; measured on an H100,
docs/benchmarks.md "On a GPU"). Without the cache each forward casts the current weights.

While the device is CUDA, batches are also copied from page-locked (pinned) host memory.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator, Optional

CHOICES = ("auto", "bf16", "fp16", "fp32")
_STATE: dict[str, Any] = {"choice": "auto", "pin": False, "task": "classification"}


def configure(choice: str = "auto", device: Any = None, task: str = "classification") -> None:
    """Set this process's precision choice (checked), the task it is for (`auto` is fp32 for regression) and whether
    batches go through pinned memory."""
    from .errors import UnlearnError

    choice = "auto" if choice is None else str(choice).strip().lower()
    if choice not in CHOICES:
        raise UnlearnError(f"--precision {choice}: unknown; use one of {', '.join(CHOICES)}")
    _STATE["choice"] = choice
    _STATE["task"] = task
    _STATE["pin"] = getattr(device, "type", None) == "cuda"


def resolved(device: Any) -> str:
    """The precision the training passes actually use on `device`: 'bf16', 'fp16' (loss-scaled loops only) or 'fp32'."""
    if getattr(device, "type", None) != "cuda" or _STATE["choice"] == "fp32":
        return "fp32"
    if _STATE["choice"] == "auto" and _STATE["task"] == "regression":
        return "fp32"
    import torch

    from .errors import UnlearnError

    index = getattr(device, "index", None)
    if index is None:
        supported = torch.cuda.is_bf16_supported()
    else:  # the card asked for (cuda:N), not the current one: a machine may hold an Ampere card beside an older one
        with torch.cuda.device(index):
            supported = torch.cuda.is_bf16_supported()
    if _STATE["choice"] == "bf16" and not supported:
        raise UnlearnError("--precision bf16: this GPU has no bfloat16 support; use --precision fp16 (loss-scaled) or fp32")
    if _STATE["choice"] == "fp16":
        return "fp16"
    return "bf16" if supported else "fp16"


def training_autocast(device: Any, scaled: bool = False) -> ContextManager[Any]:
    """The context a training pass (a method's run, `unlearn train`'s epochs) runs in. fp16 only where the loop steps
    through ScaledSteps (`scaled`); elsewhere an fp16 card runs fp32."""
    precision = resolved(device)
    if precision == "bf16" or (precision == "fp16" and scaled):
        import torch

        # cache_enabled=False: the context spans many optimizer steps (see the module docstring)
        return torch.autocast(device_type=getattr(device, "type", "cuda"), dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                              cache_enabled=False)
    return nullcontext()


@contextmanager
def for_task(task: Optional[str]) -> Iterator[None]:
    """Within the block `auto` resolves for `task` (None: as configured): a method run knows its own task, so a
    library caller of run_method gets fp32 regression passes without configuring."""
    before = _STATE["task"]
    _STATE["task"] = task or before
    try:
        yield
    finally:
        _STATE["task"] = before


def full_precision(device: Any) -> ContextManager[Any]:
    """The weights' own precision inside a training pass's autocast context: for passes that read outputs as numbers
    (a method's evaluations and stopping checks, teacher targets, solvers, merges), so that they give the figures an
    fp32 run gives. A no-op outside autocast."""
    kind = getattr(device, "type", str(device))
    if kind in ("cuda", "cpu"):
        import torch

        return torch.autocast(kind, enabled=False)
    return nullcontext()


class ScaledSteps:
    """`backward_and_step(loss, optimizer)`: loss.backward(); optimizer.step(), with dynamic loss scaling when the pass
    runs in fp16 (a no-op wrapper otherwise). `enabled` forces it on (tests run the scaler on CPU) or off."""

    def __init__(self, device: Any, enabled: Optional[bool] = None) -> None:
        import torch

        on = resolved(device) == "fp16" if enabled is None else enabled
        self.scaler = torch.amp.GradScaler(getattr(device, "type", "cuda"), enabled=True) if on else None

    def backward_and_step(self, loss: Any, optimizer: Any) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # unscales; skips the step when a gradient is inf/NaN
        self.scaler.update()


def pin_batches() -> bool:
    """Whether host batches should be page-locked before they are copied to the device."""
    return bool(_STATE["pin"])


def accelerator_stats(device: Any) -> dict[str, Any]:
    """What a run reports about the accelerator: the training precision and, on CUDA, the card and peak memory."""
    out: dict[str, Any] = {"precision": resolved(device)}
    if getattr(device, "type", None) == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name(device)
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
