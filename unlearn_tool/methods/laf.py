"""LAF: Label-Agnostic Forgetting (Shen et al. 2024; reference notes §5), and its semi-supervised "+R" variant.

`laf` never reads a label, neither of Df nor of Dr: it works on the model's representation e(x),
the input of the final classification layer (or of the module named by `feature_layer`), found with a
forward pre-hook, so no architecture changes are needed.

    Stage 0  two VAEs on the frozen original's embeddings: s_vae on all training data D, u_vae on Df
             (loss: summed MSE / B + kld_weight * KLD / B).
    then, for `epochs` passes over Df, each forget batch x_u paired with a retain batch x_r:
    Stage 1  representation-level forgetting (step Adam(lr_ue) on the feature extractor):
             m_r = ||s_vae(e_r) - e_r||^2,  m_u = ||u_vae(e_u) - e_u||^2   (per sample)
             L_UE = sum exp(m_r / (m_r + 1)) - sum exp(m_u / (m_u + 1))
    Stage 2  contrastive alignment with the frozen original (step Adam(lr_ra) on the feature extractor):
             c = 1 - cos(e, e_original)
             L_RA = sum_i log( exp(c_r,i) / sum_j exp(c_u,j / tau) )

Only the parameters upstream of the representation move (the classifier head gets no gradient from
either loss). `laf+r` adds a third step per batch pair: cross-entropy of the retain batch with its
labels, on the head only (the parameters the two stages do not train). Sizes are scaled to the
representation width; the choices and measured figures are in docs/methods.md.

`feature_module` / `capture_input` are shared with `concept-poison`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data import LabelledData
from ..errors import MethodError
from .base import MethodOutput, MethodParams, UnlearnContext, register_method
from .common import endless_batches

LARGE_MODEL_PARAMS = 1_000_000  # at this size and above LAF's published CIFAR-10 ResNet learning rates apply
SMALL_MODEL_LR = 2e-3  # both steps, below that size (measured on the digits MLP: docs/methods.md)


# ---------------------------------------------------------------- the representation

def feature_module(model: nn.Module, name: Optional[str] = None) -> tuple[str, nn.Module]:
    """The module whose *input* is the representation: `name`, or by default the last nn.Linear in module order."""
    modules = dict(model.named_modules())
    if name:
        if name not in modules or name == "":
            linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise MethodError(f"method.params.feature_layer: the model has no module {name!r}; e.g. {', '.join(linear[-3:]) or 'a module name'}")
        return name, modules[name]
    linear = [(n, m) for n, m in modules.items() if n and isinstance(m, nn.Linear)]
    if not linear:
        raise MethodError("method.params.feature_layer: the model has no nn.Linear classification layer; name the module whose input is the "
                          "representation (e.g. feature_layer=classifier.1)")
    return linear[-1]


@contextlib.contextmanager
def capture_input(module: nn.Module) -> Iterator[dict]:
    """While active, store[\"x\"] is the last input of `module`, flattened per sample (gradients flow through it)."""
    store: dict = {}

    def hook(_m, args):
        store["x"] = args[0].flatten(1)

    handle = module.register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def embed(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The representation of x (the input of `module` during model(x))."""
    with capture_input(module) as store:
        model(x)
    if "x" not in store:
        raise MethodError("method.params.feature_layer: the chosen module is not called in the model's forward pass; name another")
    return store["x"]


@torch.no_grad()
def embed_all(model: nn.Module, module: nn.Module, data: LabelledData, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Representations of every sample, in order (labels are not read)."""
    out = [embed(model, module, x.to(device)).float() for x, _ in data.batches(batch_size)]
    return torch.cat(out)


def split_params(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(feature-extractor parameters: those the representation depends on, head parameters: the rest)."""
    model.zero_grad(set_to_none=True)
    e = embed(model, module, x)
    if not e.requires_grad:  # the module's input is the data itself: nothing feeds it (the caller names the fix)
        return [], [q for q in model.parameters() if q.requires_grad]
    e.float().pow(2).sum().backward()
    body, head = [], []
    for q in model.parameters():
        if q.requires_grad:
            (body if q.grad is not None else head).append(q)
    model.zero_grad(set_to_none=True)
    return body, head


# ---------------------------------------------------------------- VAEs on embeddings

class EmbeddingVAE(nn.Module):
    """MLP encoder dim -> h1 -> h2 -> (mu, logvar) and a symmetric decoder (LAF: 256 -> 128 -> 32 -> 16)."""

    def __init__(self, dim: int, latent: int):
        super().__init__()
        h1, h2 = max(dim // 2, 2 * latent), max(dim // 8, latent)
        self.enc = nn.Sequential(nn.Linear(dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.mu = nn.Linear(h2, latent)
        self.logvar = nn.Linear(h2, latent)
        self.dec = nn.Sequential(nn.Linear(latent, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU(), nn.Linear(h1, dim))

    def forward(self, e: torch.Tensor, noise: Optional[torch.Tensor] = None):
        h = self.enc(e)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-10, 10)
        z = mu if noise is None else mu + noise * (0.5 * logvar).exp()
        return self.dec(z), mu, logvar

    def reconstruct(self, e: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the posterior mean (used in the unlearning losses)."""
        return self.forward(e)[0]


def train_vae(emb: torch.Tensor, latent: int, epochs: int, lr: float, batch_size: int, kld_weight: float,
              gen: torch.Generator, device: torch.device) -> tuple[EmbeddingVAE, float]:
    """Fit a VAE to fixed embeddings (CPU generator for shuffles and noise); returns (frozen VAE, last epoch's mean loss)."""
    with torch.random.fork_rng(devices=[]):  # the VAE's initialisation follows the run's seed, the global RNG is left alone
        # the CPU generator only (built on CPU, then moved): torch.manual_seed would also reseed every CUDA generator,
        # which fork_rng(devices=[]) does not restore
        torch.random.default_generator.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))
        vae = EmbeddingVAE(emb.shape[1], latent).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    n = len(emb)
    last = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            e = emb[idx].to(device)
            noise = torch.randn(e.shape[0], latent, generator=gen).to(device)
            rec, mu, logvar = vae(e, noise)
            b = e.shape[0]
            mse = (rec - e).pow(2).sum() / b
            kld = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / b
            loss = mse + kld_weight * kld
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * b
            count += b
        last = total / max(count, 1)
    vae.eval()
    for q in vae.parameters():
        q.requires_grad_(False)
    return vae, last


# ---------------------------------------------------------------- the method

class LAFParams(MethodParams):
    feature_layer: Optional[str] = Field(
        None, description="Module whose INPUT is the representation (flattened). Default: the last nn.Linear in module order, i.e. the "
                          "input of the classification layer (LAF: the 256-d fc1 output feeding fc2).",
    )
    latent_dim: Optional[int] = Field(
        None, ge=1, description="VAE latent size. Default: representation width / 16, clamped to 2..16 (LAF: 16 for a 256-d representation; "
                                "4 for the 64-d digits MLP).",
    )
    vae_epochs: int = Field(10, ge=1, description="Epochs of each VAE on the cached embeddings (LAF: 10).")
    vae_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the VAEs (LAF: 1e-3).")
    vae_batch_size: int = Field(32, ge=1, description="VAE batch size (LAF: 32).")
    kld_weight: float = Field(0.025, ge=0, description="KL weight in the VAE loss (LAF: 0.025).")
    epochs: int = Field(40, ge=1, description="Passes over Df, each forget batch paired with a retain batch (LAF CIFAR-10: 40).")
    batch_size: int = Field(32, ge=1, description="Batch size of the forget and retain batches (LAF: 32). The losses are sums, so it scales them.")
    lr_ue: Optional[float] = Field(
        None, gt=0, description=f"Adam learning rate of the representation-forgetting step. Default (auto): LAF's CIFAR-10 ResNet value 1e-5 for "
        f"models with >= {LARGE_MODEL_PARAMS:,} parameters, else {SMALL_MODEL_LR:g} (measured: at 1e-5 the digits MLP forgets nothing).",
    )
    lr_ra: Optional[float] = Field(
        None, gt=0, description=f"Adam learning rate of the alignment step. Default (auto): LAF's 5e-5 (class) / 4e-5 (sample) for models with "
        f">= {LARGE_MODEL_PARAMS:,} parameters, else {SMALL_MODEL_LR:g}.",
    )
    tau: float = Field(20.0, gt=0, description="Temperature on the forget term of the alignment loss (LAF: 20 for class and random forgetting).")


class LAFRParams(LAFParams):
    head_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the head's cross-entropy step on retain labels (the +R variant).")


def learning_rates(model: nn.Module, scenario: str, p: LAFParams) -> tuple[float, float]:
    """(lr_ue, lr_ra): the parameters, else LAF's published values for large models, else SMALL_MODEL_LR."""
    large = sum(q.numel() for q in model.parameters()) >= LARGE_MODEL_PARAMS
    lr_ue = p.lr_ue if p.lr_ue is not None else (1e-5 if large else SMALL_MODEL_LR)
    lr_ra = p.lr_ra if p.lr_ra is not None else ((5e-5 if scenario == "class" else 4e-5) if large else SMALL_MODEL_LR)
    return lr_ue, lr_ra


def representation(ctx: UnlearnContext, model: nn.Module, p: LAFParams) -> tuple[str, nn.Module, list[nn.Parameter], list[nn.Parameter]]:
    """(layer, module, feature-extractor parameters, head parameters) of a trainable `model`; MethodError when the
    layer does not exist or no trainable parameter feeds it (its input is the data itself)."""
    layer, module = feature_module(model, p.feature_layer)
    probe, _ = ctx.forget.take(torch.arange(min(2, len(ctx.forget))))
    body, head = split_params(model, module, probe.to(ctx.device))
    if not body:
        raise MethodError(f"method.params.feature_layer: no trainable parameter feeds {layer!r}; name a later module")
    return layer, module, body, head


def preflight(ctx: UnlearnContext, p: LAFParams) -> None:
    representation(ctx, ctx.student(), p)


def laf(ctx: UnlearnContext, p: LAFParams, task: str, use_labels: bool) -> MethodOutput:
    device = ctx.device
    original = ctx.original
    model = ctx.student().eval()  # eval mode: BatchNorm statistics and dropout frozen, as in the frozen original it is aligned with
    layer, module, body, head = representation(ctx, model, p)
    orig_module = dict(original.named_modules())[layer]

    # Stage 0: the two VAEs on the original's embeddings (computed once: the original is frozen)
    emb_all = embed_all(original, orig_module, ctx.splits.train, device)
    # one constant scale so that the mean squared norm of the original's representations over D is 1: LAF's
    # exp(m / (m + 1)) saturates (zero gradient) once the squared reconstruction error m is >> 1
    scale = float(emb_all.pow(2).sum(1).mean().clamp_min(1e-12).rsqrt())
    emb_all = emb_all * scale
    emb_forget = emb_all[ctx.splits.forget_idx]
    dim = emb_all.shape[1]
    latent = p.latent_dim or max(2, min(16, dim // 16))
    s_vae, s_loss = train_vae(emb_all, latent, p.vae_epochs, p.vae_lr, p.vae_batch_size, p.kld_weight, ctx.generator(61), device)
    ctx.report(f"{task}: vae on D", 1, 2)
    u_vae, u_loss = train_vae(emb_forget, latent, p.vae_epochs, p.vae_lr, p.vae_batch_size, p.kld_weight, ctx.generator(62), device)
    ctx.report(f"{task}: vae on Df", 2, 2)

    lr_ue, lr_ra = learning_rates(model, ctx.scenario, p)
    opt_ue = torch.optim.Adam(body, lr=lr_ue)
    opt_ra = torch.optim.Adam(body, lr=lr_ra)
    opt_head = torch.optim.Adam(head, lr=p.head_lr) if use_labels and head else None

    gen_f, gen_r = ctx.generator(63), ctx.generator(64)
    retain_stream = endless_batches(ctx.retain, p.batch_size, gen_r)
    steps = 0
    sums = {"ue": 0.0, "ra": 0.0, "head_ce": 0.0}
    for epoch in range(p.epochs):
        for x_u, _ in ctx.forget.batches(p.batch_size, shuffle=True, generator=gen_f):
            x_r, y_r = next(retain_stream)
            x_u, x_r = x_u.to(device), x_r.to(device)
            # Stage 1: representation-level forgetting
            e_r, e_u = embed(model, module, x_r).float() * scale, embed(model, module, x_u).float() * scale
            m_r = (s_vae.reconstruct(e_r) - e_r).pow(2).sum(1)
            m_u = (u_vae.reconstruct(e_u) - e_u).pow(2).sum(1)
            loss_ue = torch.exp(m_r / (m_r + 1)).sum() - torch.exp(m_u / (m_u + 1)).sum()
            opt_ue.zero_grad(set_to_none=True)
            loss_ue.backward()
            opt_ue.step()
            # Stage 2: contrastive alignment with the frozen original
            e_r, e_u = embed(model, module, x_r).float(), embed(model, module, x_u).float()
            with torch.no_grad():
                o_r, o_u = embed(original, orig_module, x_r).float(), embed(original, orig_module, x_u).float()
            c_r = 1 - F.cosine_similarity(e_r, o_r, dim=1)
            c_u = 1 - F.cosine_similarity(e_u, o_u, dim=1)
            loss_ra = (c_r - torch.logsumexp(c_u / p.tau, dim=0)).sum()
            opt_ra.zero_grad(set_to_none=True)
            loss_ra.backward()
            opt_ra.step()
            # +R: cross-entropy on the head with the retain labels
            if opt_head is not None:
                loss_head = F.cross_entropy(model(x_r), y_r.to(device))
                opt_head.zero_grad(set_to_none=True)
                loss_head.backward()
                opt_head.step()
                sums["head_ce"] += float(loss_head.detach())
            sums["ue"] += float(loss_ue.detach())
            sums["ra"] += float(loss_ra.detach())
            steps += 1
        ctx.report(task, epoch + 1, p.epochs)
    model.zero_grad(set_to_none=True)
    info = {"feature_layer": layer, "representation_dim": dim, "latent_dim": latent, "representation_scale": round(scale, 6), "steps": steps, "lr_ue": lr_ue, "lr_ra": lr_ra,
            "vae_loss_all": round(s_loss, 5), "vae_loss_forget": round(u_loss, 5),
            "trained_params": sum(q.numel() for q in body) + (sum(q.numel() for q in head) if opt_head is not None else 0),
            "labels_used": use_labels,
            **{f"mean_{k}_loss": round(v / max(steps, 1), 5) for k, v in sums.items() if k != "head_ce" or use_labels}}
    return MethodOutput(model=model.eval(), info=info)


def run(ctx: UnlearnContext, p: LAFParams) -> MethodOutput:
    return laf(ctx, p, "laf", use_labels=False)


def run_r(ctx: UnlearnContext, p: LAFRParams) -> MethodOutput:
    return laf(ctx, p, "laf+r", use_labels=True)


register_method(
    "laf", LAFParams, run,
    summary="LAF: label-free forgetting on the representation (two VAEs + contrastive alignment with the original); reads no label.",
    reference="Shen et al. ICLR 2024, Label-Agnostic Forgetting (ShaofeiShen768/LAF)",
    label_free=True,  # reads no label of Df or Dr (tests/test_methods/test_seed_methods.py proves it); laf+r does read them
    preflight=preflight,
)
register_method(
    "laf+r", LAFRParams, run_r,
    summary="LAF+R: LAF plus cross-entropy on the classification head with the retain labels (semi-supervised).",
    reference="Shen et al. 2024, Label-Agnostic Forgetting, '+R' variant (ShaofeiShen768/LAF)",
    preflight=preflight,
)
