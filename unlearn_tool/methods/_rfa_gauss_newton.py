"""RFA for regression solved by one Gauss-Newton step in the adapters' B weights (`solver: gauss-newton`; docs/rfa.md R9).

The objective is RFA's own (forget outputs to their targets, retained outputs to the teacher's, both normalised by the
retained targets' variance and weighted by w_forget and w_align), linearised at B = 0, where every adapter's output is
linear in its B with A fixed at its seeded random init. Its damped least-squares solution weighs the change by the
curvature of the retained outputs: the step moves the adapters in directions the retained samples do not feel, which
Adam, following a few retained samples per step, cannot see. On the converged rotated-digits CNN this is what made
sample unlearning selective (benchmarks/regression_frontier.py). The damping is read along a path, strongest first,
with the Adam loop's stopping rule (R5): the first damping whose model meets it is kept, else the one nearest to it
(the teacher, damping infinite, included).

Not a method file (the leading underscore keeps it out of the registry's discovery); rfa_regression.py calls it.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import MethodError
from ..precision import full_precision

JACOBIAN_BYTES = 1 << 30  # the rows x adapter-weights Jacobian is refused beyond this (lower the rank or the layers, or use adam)
RETAINED_ROWS = 1024  # retained samples (never the held-back ones) in the least-squares problem
DAMPING_PATH = 19  # dampings read: the kernel's mean eigenvalue times 10^0, 10^-0.5, 10^-1, ... 10^-9 (strongest first)


def _jacobian(module: torch.nn.Module, layers: list, z: torch.Tensor, state, chunk: int = 256) -> torch.Tensor:
    """d outputs / d B, one row per (sample, output), at the current B: per-sample gradients from hooks (each B's
    input times the gradient at its output, summed over positions), not torch.func, whose first vmap imports
    torch._dynamo (1.3 s). The student is in eval mode, so samples do not interact."""
    fused, state.fused = state.fused, False  # the two-branch forward, so that each lora_B runs as a module
    store: dict[str, list] = {}

    def recorder(name: str):
        def hook(_module, inputs, output):
            store[name] = [inputs[0].detach(), None]
            output.register_hook(lambda grad: store[name].__setitem__(1, grad.detach()))
        return hook

    handles = [layer.lora_B.register_forward_hook(recorder(name)) for name, layer in layers]
    weights = [layer.lora_B.weight for _, layer in layers]
    rows = []
    try:
        for i in range(0, len(z), chunk):
            zc = z[i:i + chunk]
            with torch.enable_grad():
                out = module(zc).reshape(len(zc), -1)
                per_output = []
                for j in range(out.shape[1]):
                    for entry in store.values():
                        entry[1] = None
                    torch.autograd.grad(out[:, j].sum(), weights, retain_graph=j < out.shape[1] - 1, allow_unused=True)
                    blocks = []
                    for name, layer in layers:
                        h, g = store.get(name, (None, None))
                        if g is None:  # a layer this output does not reach
                            blocks.append(torch.zeros(len(zc), layer.lora_B.weight.numel(), device=zc.device))
                        elif layer.conv:  # 1 x 1 convolution: sum over positions
                            blocks.append(torch.einsum("nohw,nrhw->nor", g, h).flatten(1))
                        else:  # any leading token dimensions are positions too
                            blocks.append(torch.einsum("nto,ntr->nor", g.reshape(len(zc), -1, g.shape[-1]),
                                                       h.reshape(len(zc), -1, h.shape[-1])).flatten(1))
                    per_output.append(torch.cat(blocks, 1))
            rows.append(torch.stack(per_output, 1).flatten(0, 1))
    finally:
        for handle in handles:
            handle.remove()
        state.fused = fused
    return torch.cat(rows)


def solve(net, retain, z_forget: torch.Tensor, t_forget: torch.Tensor, targets: torch.Tensor, var: float, w_forget: float,
          w_align: float, read: Callable[[], float]) -> dict:
    """Set the adapters' B to the Gauss-Newton step along the damping path; `read` scores the model as it now is (the
    stopping rule's check_score: at most 1 meets it). Returns what was kept, for the method's info."""
    from ..lora import LoraLayer

    module = net.forward
    layers = [(n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)]
    names = [f"{n}.lora_B.weight" for n, _ in layers]
    params = dict(module.named_parameters())
    dims = sum(params[n].numel() for n in names)
    idx = retain.train_idx[:RETAINED_ROWS]
    z_r, _, t_r = retain._encode(idx)
    k = t_forget.reshape(len(t_forget), -1).shape[1]
    rows = (len(z_forget) + len(z_r)) * k
    if rows * dims * 8 > JACOBIAN_BYTES or min(rows, dims) ** 2 * 8 > JACOBIAN_BYTES:  # float64 Jacobian, and its square form
        raise MethodError(f"rfa solver gauss-newton: the Jacobian would take {rows * dims * 8 / 2**30:.1f} GiB ({rows} output rows x {dims} "
                          "adapter weights); lower rank, adapt fewer layers (target_layers), or use solver adam")
    with torch.no_grad(), full_precision(z_r.device):
        r_forget = (targets - t_forget).reshape(-1)
        r_retain = (t_r.reshape(len(z_r), -1) - net.batched(z_r).reshape(len(z_r), -1)).reshape(-1)  # 0 unless anchored
    try:
        with full_precision(z_r.device):  # a least-squares solve: the Jacobian in the weights' precision, not bf16
            jac = torch.cat([_jacobian(module, layers, z_forget, net.fused), _jacobian(module, layers, z_r, net.fused)]).double()
    except Exception as e:  # noqa: BLE001 - a model whose per-sample gradients cannot be read this way
        raise MethodError(f"rfa solver gauss-newton could not differentiate this model per sample ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''}); use solver adam") from e
    r = torch.cat([r_forget, r_retain]).double()
    w = torch.cat([torch.full((len(r_forget),), w_forget / (len(r_forget) * var)),
                   torch.full((len(r_retain),), w_align / (len(r_retain) * var))]).double().to(jac.device).sqrt()
    scale, step = damped_steps(jac * w[:, None], w * r)
    found = {"solver": "gauss-newton", "adapter_weights": dims, "rows": rows}
    best, kept = (read(), None), None  # the teacher (B = 0, damping infinite) is the first candidate
    for j in range(DAMPING_PATH):
        lam = scale * 10.0 ** (-j / 2)
        b = step(lam)
        _set(params, names, b)
        score = read()
        if score <= 1:
            return {**found, "stop_reason": "criterion", "damping": lam, "dampings_read": j + 1}
        if score < best[0]:
            best, kept = (score, lam), b
    _set(params, names, kept if kept is not None else torch.zeros(dims, dtype=torch.float64))
    return {**found, "stop_reason": "nearest", "damping": best[1], "dampings_read": DAMPING_PATH, "kept_check_score": round(best[0], 3)}


def damped_steps(jw: torch.Tensor, wr: torch.Tensor, form: str = "auto") -> tuple[float, Callable[[float], torch.Tensor]]:
    """The damped least-squares step b(lam) = (Jw^T Jw + lam I)^-1 Jw^T wr for any lam, from one eigendecomposition of
    the smaller square form: Jw Jw^T (rows x rows; b = Jw^T U (D + lam)^-1 U^T wr) when there are fewer rows than
    weights, else Jw^T Jw (b = V (E + lam)^-1 V^T Jw^T wr). Also the damping scale: trace / rows, the same in both."""
    rows, dims = jw.shape
    scale = float(jw.pow(2).sum()) / rows or 1.0
    if form == "dual" or (form == "auto" and rows <= dims):
        d, u = torch.linalg.eigh(jw @ jw.T)
        d, proj = d.clamp_min(0), u.T @ wr
        return scale, lambda lam: jw.T @ (u @ (proj / (d + lam)))
    e, v = torch.linalg.eigh(jw.T @ jw)
    e, proj = e.clamp_min(0), v.T @ (jw.T @ wr)
    return scale, lambda lam: v @ (proj / (e + lam))


def _set(params: dict, names: list[str], b: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for n in names:
            p = params[n]
            p.copy_(b[offset:offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()
