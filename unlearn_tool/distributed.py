"""Several processes (GPUs or machines) under an existing launcher: `torchrun --nproc_per_node N $(which unlearn) ...`.

torchrun (and `accelerate launch`, which sets the same variables) starts N copies of the command with
RANK, WORLD_SIZE, LOCAL_RANK and a rendezvous address in the environment. `setup()` joins the process
group (NCCL on CUDA, gloo on CPU). While `data_parallel()` is active:

- every shuffled training batch (`LabelledData.batches(shuffle=True)`) is the same global batch on every
  rank (the shuffling generators are seeded alike) and each rank keeps its own contiguous part of it, so
  the per-step totals are those of one process (a batch that does not split evenly is processed whole on
  every rank);
- before every optimizer step, gradients are averaged over the ranks (a global optimizer pre-step hook),
  so every rank takes the same step and the weights stay identical: the mean of the ranks' part-batch
  gradients is the full batch's gradient when the parts are equal.

Evaluation (unshuffled passes) is not split: every rank sees the same figures, so data-dependent
decisions (early stopping) agree everywhere. Only rank 0 writes outputs and prints. Loops that draw
batches another way (e.g. RFA's index sampling) repeat the same work on every rank: correct, not faster.
BatchNorm statistics are per rank (no SyncBatchNorm): models with BatchNorm match a single process only
approximately.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

_STATE: dict[str, object] = {"dist": None, "shard": False}


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    backend: str


def requested() -> bool:
    """Whether a launcher started this process as one of several."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def setup(device: str = "auto") -> Optional[Dist]:
    """Join the process group once (no-op for a single process); returns this process's place in it."""
    if _STATE["dist"] is not None or not requested():
        return _STATE["dist"]  # type: ignore[return-value]
    import torch
    import torch.distributed as dist

    from .errors import UnlearnError

    use_cuda = torch.cuda.is_available() and device not in ("cpu",)
    backend = "nccl" if use_cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
    except Exception as e:  # noqa: BLE001 - a launcher misconfiguration is the user's to fix
        raise UnlearnError(f"cannot join the process group ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                           "start the command with torchrun (or accelerate launch)") from None
    _STATE["dist"] = Dist(dist.get_rank(), dist.get_world_size(), local, backend)
    return _STATE["dist"]  # type: ignore[return-value]


def current() -> Optional[Dist]:
    return _STATE["dist"]  # type: ignore[return-value]


def is_writer() -> bool:
    """Rank 0 (or a single process): the one that writes outputs and prints."""
    d = current()
    return d is None or d.rank == 0


def device_for(name: str) -> str:
    """Each rank on its own GPU: `cuda` becomes `cuda:LOCAL_RANK`."""
    d = current()
    if d is not None and d.backend == "nccl" and name in ("auto", "cuda"):
        return f"cuda:{d.local_rank}"
    return name


def shard(x, y):  # type: ignore[no-untyped-def]
    """This rank's contiguous part of a global batch. A batch that does not split evenly (often the last) is processed
    whole on every rank: averaging unequal parts' mean gradients would weight their samples unequally."""
    d = current()
    if d is None or not _STATE["shard"] or len(y) % d.world:
        return x, y
    import torch

    return torch.tensor_split(x, d.world)[d.rank], torch.tensor_split(y, d.world)[d.rank]


@contextmanager
def data_parallel() -> Iterator[None]:
    """Split shuffled training batches over the ranks and average gradients before every optimizer step."""
    d = current()
    if d is None:
        yield
        return
    import torch.distributed as dist
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def average_gradients(optimizer, _args, _kwargs):  # type: ignore[no-untyped-def]
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:  # the same on every rank (same model, same code path): skipped everywhere alike
                    continue
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(d.world)

    handle = register_optimizer_step_pre_hook(average_gradients)
    _STATE["shard"] = True
    try:
        yield
    finally:
        _STATE["shard"] = False
        handle.remove()


def barrier() -> None:
    d = current()
    if d is not None:
        import torch.distributed as dist

        dist.barrier()
