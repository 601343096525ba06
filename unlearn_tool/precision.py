"""Numeric precision of training passes on an accelerator: `--precision auto|bf16|fp32`.

On CUDA, `auto` (the default) runs the method's and `unlearn train`'s forward passes under
`torch.autocast` in bfloat16 where the card supports it (Ampere and newer): about twice the matmul
throughput and half the activation memory, with fp32 weights, fp32 optimizer state and fp32 losses
(autocast keeps reductions such as cross-entropy and softmax in fp32). bfloat16 has fp32's exponent
range, so no loss scaling is needed. On a card without bfloat16, `auto` stays in fp32: fp16 would
need a gradient scaler in every method's step, which we do not have, and a silently unscaled fp16
run can underflow gradients. `--precision fp32` turns autocast off everywhere.

CPU and MPS always run fp32 (CPU autocast is slower than fp32 for these models). Evaluation passes
(the summary, the audit) run in fp32 on every device, so reported figures do not depend on the card.

While the device is CUDA, batches are also copied from page-locked (pinned) host memory.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

CHOICES = ("auto", "bf16", "fp32")
_STATE: dict[str, Any] = {"choice": "auto", "pin": False}


def configure(choice: str = "auto", device: Any = None) -> None:
    """Set this process's precision choice (checked) and whether batches go through pinned memory."""
    from .errors import UnlearnError

    choice = "auto" if choice is None else str(choice).strip().lower()
    if choice not in CHOICES:
        raise UnlearnError(f"--precision {choice}: unknown; use one of {', '.join(CHOICES)}")
    _STATE["choice"] = choice
    _STATE["pin"] = getattr(device, "type", None) == "cuda"


def resolved(device: Any) -> str:
    """The precision the training passes actually use on `device`: 'bf16' or 'fp32'."""
    if getattr(device, "type", None) != "cuda" or _STATE["choice"] == "fp32":
        return "fp32"
    import torch

    from .errors import UnlearnError

    supported = torch.cuda.is_bf16_supported()
    if _STATE["choice"] == "bf16" and not supported:
        raise UnlearnError("--precision bf16: this GPU has no bfloat16 support; use --precision fp32 (or auto)")
    return "bf16" if supported else "fp32"


def training_autocast(device: Any) -> ContextManager[Any]:
    """The context a training pass (a method's run, `unlearn train`'s epochs) runs in."""
    if resolved(device) == "bf16":
        import torch

        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


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
