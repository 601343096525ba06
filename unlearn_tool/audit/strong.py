"""The strong audit tier: per-example membership (U-LiRA) and relearn time. Expensive; `unlearn audit --tier strong`.

U-LiRA (Hayes et al. 2024, "Inexact unlearning needs more careful evaluations"), as implemented here:

1. Shadow models are trained with the request's recipe (the original checkpoint's recorded `train_config`,
   else `unlearn train`'s defaults) on random halves of the train split. Halves come in complementary
   pairs, so every forget example is in exactly half of the shadows.
2. A shadow that saw a forget example is then unlearned with the audited model's own method and
   parameters (read from its metadata), forgetting the forget examples of its half: its output on that
   example is an "unlearned" (IN) observation. A shadow that never saw the example gives an OUT observation.
   When the audited model records no method, IN shadows are simply trained with the example (plain LiRA).
3. The per-example statistic is LiRA's logit-scaled confidence, log(p_y / (1 - p_y)). For each forget
   example, Gaussians are fitted to its IN and OUT observations; a model's membership score on it is the
   log-likelihood ratio log N(s; IN) - log N(s; OUT).
4. The attack is measured as "is this model's output on the forget set distinguishable from a model that
   never saw it?": positives are the audited model's scores on the forget examples, negatives the OUT
   shadows' scores on the same examples (each scored with Gaussians fitted without that shadow). AUC and
   TPR at 1% and 0.1% FPR, for the unlearned model and for the retrained reference side by side (the
   reference never saw the forget set, so its row is the attack's chance level).

Relearn time (as AIN, Tarun et al. / ERASURE): fine-tuning steps on the forget set (Adam 1e-3, batch 32)
until the original's behaviour on it is back, for the unlearned model and the reference; AIN is their
ratio (below 1: the forgotten behaviour returns faster than it can be learned from scratch). "Back" is
forget accuracy at 95% of the original's for class unlearning, and (our choice, since a retrained model
already classifies forgotten samples about as well as test samples) the forget set's mean loss within
5% of the original's for sample unlearning.

Shadow models are cached on disk by content hash ($UNLEARN_CACHE_DIR/shadows), so a second audit of the
same request and recipe costs only the scoring.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..data import LabelledData, Splits
from ..evaluate import predict_logits
from ..job import Job, UnlearnContext, seed_everything
from ..precision import resolved
from ..training import TrainConfig, fit

DEFAULT_SHADOWS = 16
RELEARN_LR = 1e-3
RELEARN_BATCH = 32
RELEARN_MAX_STEPS = 300
RELEARN_TARGET = 0.95  # within 5% of the original's forget accuracy (class) or loss (sample)
FPRS = (0.01, 0.001)
Progress = Optional[Callable[[str, int, int], None]]


# ---------------------------------------------------------------- statistics

def logit_confidence(model: nn.Module, data: LabelledData, device: torch.device, batch_size: int) -> np.ndarray:
    """LiRA's statistic per sample: log p_y - log(1 - p_y), computed stably from the logits."""
    logits, y = predict_logits(model, data, device, batch_size)
    logits = logits.double()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).logsumexp(1)
    return (true - others).numpy()


def _gauss_logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


GLOBAL_VARIANCE_BELOW = 16  # observations per example and side; fewer: one pooled variance (LiRA's "fixed variance")


def _fit(stats: np.ndarray, mask: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and standard deviation over the shadows selected by `mask` (N x M).

    With few shadows a per-example variance from a handful of points has heavy tails that swamp the
    low-FPR region, so below GLOBAL_VARIANCE_BELOW observations the variance is pooled over examples.
    """
    n = mask.sum(0).clip(min=1)
    mu = (stats * mask).sum(0) / n
    dev2 = ((stats - mu) ** 2) * mask
    if n.min() < GLOBAL_VARIANCE_BELOW:
        var = np.full_like(mu, dev2.sum() / max(mask.sum() - mask.shape[1], 1))
    else:
        var = dev2.sum(0) / np.clip(n - 1, 1, None)
    return mu, np.sqrt(np.maximum(var, floor ** 2))


def roc_summary(pos: np.ndarray, neg: np.ndarray) -> dict[str, Any]:
    """AUC and TPR at the fixed FPRs (thresholds from the negatives), plus how many negatives back each FPR."""
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    out: dict[str, Any] = {"positives": int(len(pos)), "negatives": int(len(neg))}
    if len(pos) == 0 or len(neg) == 0:
        return out
    out["auc"] = float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))
    for fpr in FPRS:
        thr = np.quantile(neg, 1 - fpr, method="higher")
        key = f"tpr_at_{fpr * 100:g}pct_fpr"
        out[key] = float((pos > thr).mean())
        out[key + "_resolved"] = bool(len(neg) * fpr >= 1)  # at least one negative above the threshold on average
    return out


def ulira_scores(stats: np.ndarray, members: np.ndarray, target: np.ndarray, floor: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Membership scores of a target model (per forget example), and the leave-one-out scores of every OUT shadow.

    stats: (N shadows, M examples) statistics; members: (N, M) bool, True where the shadow saw (then unlearned) the example.
    """
    mu_in, sd_in = _fit(stats, members, floor)
    mu_out, sd_out = _fit(stats, ~members, floor)
    target_scores = _gauss_logpdf(target, mu_in, sd_in) - _gauss_logpdf(target, mu_out, sd_out)
    negatives = []
    for j in range(stats.shape[0]):  # each OUT observation scored by Gaussians fitted without its own shadow
        keep = np.ones(stats.shape[0], bool)
        keep[j] = False
        mi, si = _fit(stats[keep], members[keep], floor)
        mo, so = _fit(stats[keep], ~members[keep], floor)
        out = ~members[j]
        s = stats[j, out]
        negatives.append(_gauss_logpdf(s, mi[out], si[out]) - _gauss_logpdf(s, mo[out], so[out]))
    return target_scores, np.concatenate(negatives) if negatives else np.zeros(0)


# ---------------------------------------------------------------- shadows

def recipe_of(job: Job) -> TrainConfig:
    """The training recipe the original recorded (`unlearn train` writes train_config), else the defaults."""
    raw = job.checkpoint_metadata.get("unlearn.train_config")
    if raw:
        try:
            return TrainConfig(**json.loads(raw))
        except Exception:  # noqa: BLE001 - an unreadable recipe falls back to the defaults (said in the report)
            pass
    return TrainConfig()


def _cache_dir() -> Path:
    root = os.environ.get("UNLEARN_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "unlearn") / "shadows"


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _code_digest(method: str) -> str:
    """The tool's version and the method's source: a shadow unlearned by other code is never reused."""
    import inspect

    from .. import __version__
    from ..methods import get_method

    try:
        source = inspect.getsource(inspect.getmodule(get_method(method).run))  # type: ignore[arg-type]
    except (OSError, TypeError):
        source = ""
    return hashlib.sha256(f"{__version__}\n{source}".encode()).hexdigest()[:16]


def unlearned_shadow_key(base_key: str, method: str, params: dict[str, Any], scenario: str, forgotten: torch.Tensor) -> str:
    """Cache key of a shadow after unlearning: the trained shadow, the method, its parameters and code, and exactly
    which samples it forgot (two requests on the same data must never share an unlearned shadow)."""
    digest = hashlib.sha256(np.asarray(forgotten, dtype="<i8").tobytes()).hexdigest()
    return _key(base_key, "unlearned/v2", method, params, scenario, digest, _code_digest(method))


def _cached(key: str, build: Callable[[], nn.Module], make: Callable[[], nn.Module]) -> tuple[nn.Module, bool]:
    """A shadow from the cache (verified safetensors), or built and stored."""
    from safetensors.torch import load_file

    from ..checkpoint import non_finite, replace_atomically, save_canonical

    path = _cache_dir() / f"{key}.safetensors"
    if path.is_file():
        try:
            cached = load_file(str(path))
            if not non_finite(cached):  # a NaN in a cached shadow crashed the attack (and spread to shadows built on it)
                model = make()
                model.load_state_dict(cached, strict=True)
                return model.eval(), True
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
            pass
    model = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if not non_finite(state):  # a diverged shadow is not kept for the next audit
            replace_atomically(path, lambda tmp: save_canonical(state, tmp, {"key": key}))
    except Exception:  # noqa: BLE001 - an unwritable cache only costs time
        pass
    return model.eval(), False


def shadow_statistics(job: Job, method: Optional[str], params: Optional[dict[str, Any]], shadows: int,
                      progress: Progress = None) -> dict[str, Any]:
    """Train (or load) the shadows and return the (N x M) forget-set statistics and memberships."""
    from ..methods import parse_params, run_method
    from ..methods.ssd import data_fingerprint

    shadows = max(2, shadows + shadows % 2)
    train, forget_idx = job.splits.train, job.splits.forget_idx
    n = len(train)
    recipe = recipe_of(job)
    rng = np.random.default_rng(job.seed + 9173)
    masks = []
    for _ in range(shadows // 2):
        half = np.zeros(n, bool)
        half[rng.permutation(n)[: n // 2]] = True
        masks += [half, ~half]
    data_key = data_fingerprint(train)
    precision = resolved(job.device)  # shadows trained in bf16 on a card are other models than fp32 ones (CPU keys unchanged)
    precision_part = () if precision == "fp32" else (f"precision={precision}",)
    method_params = parse_params(method, params or {}) if method else None
    stats, members, hits, started = [], [], 0, time.perf_counter()
    for i, mask in enumerate(masks):
        idx = torch.from_numpy(np.nonzero(mask)[0])
        sub = train.subset(idx)
        base_key = _key("shadow/v1", data_key, job.request.model.arch, job.request.model.kwargs, recipe.model_dump(), job.seed, i,
                        *precision_part)

        def train_shadow(sub=sub, i=i) -> nn.Module:
            seed_everything(job.seed * 31 + i)
            model = job.for_seed(job.seed * 31 + i).make_model()
            fit(model, sub, recipe, job.device, torch.Generator().manual_seed(job.seed * 31 + i))
            return model

        model, hit = _cached(base_key, train_shadow, job.make_model)
        hits += hit
        in_forget = mask[forget_idx.numpy()]
        if method_params is not None and in_forget.any() and (~mask).any():
            pos = {int(g): k for k, g in enumerate(idx.tolist())}  # global train index -> position in the half
            f_local = torch.tensor([pos[int(g)] for g in forget_idx[torch.from_numpy(in_forget)].tolist()])
            r_local = torch.tensor(sorted(set(range(len(idx))) - set(f_local.tolist())))
            splits = Splits(train=sub, test=job.splits.test, forget_idx=f_local, retain_idx=r_local,
                            scenario=job.splits.scenario, forget_classes=list(job.splits.forget_classes))

            def unlearn_shadow(model=model, splits=splits, i=i) -> nn.Module:
                ctx = UnlearnContext(original=copy.deepcopy(model).to(job.device).eval(), make_model=job.make_model, splits=splits,
                                     num_classes=job.num_classes, device=job.device, seed=job.seed * 31 + i,
                                     batch_size=job.request.data.batch_size, task=job.task)
                out, _ = run_method(method, ctx, method_params)
                return out.model

            unlearn_key = unlearned_shadow_key(base_key, method, method_params.model_dump(mode="json"), job.splits.scenario,
                                               forget_idx[torch.from_numpy(in_forget)])
            model, hit = _cached(unlearn_key, unlearn_shadow, job.make_model)
            hits += hit
        stat = logit_confidence(model.to(job.device), job.splits.forget, job.device, job.request.data.batch_size)
        if not np.isfinite(stat).all():  # a shadow that diverged in training (cached ones are checked in _cached) poisons the attack
            from ..errors import DivergedError

            what = f"shadow model {i + 1} of {len(masks)}" + (f" after {method}" if method_params is not None and in_forget.any() else "")
            raise DivergedError(f"strong audit: {what} gives NaN/Inf outputs on the forget set (it diverged training on the "
                                "original's recipe), so the attack cannot be fitted; audit with --tier standard, or train the "
                                "original with a recipe (lr, epochs) that converges")
        stats.append(stat)
        members.append(in_forget)
        if progress:
            progress("strong audit: shadow models", i + 1, len(masks))
    return {"stats": np.stack(stats), "members": np.stack(members), "recipe": recipe.model_dump(), "shadows": len(masks),
            "cache_hits": hits, "shadow_time_s": round(time.perf_counter() - started, 3)}


# ---------------------------------------------------------------- relearn time

RELEARN_EVAL = 512  # forget samples the accuracy is checked on after each step (all of them when fewer)


def _forget_figure(model: nn.Module, data: LabelledData, job: Job, by_loss: bool) -> float:
    """Mean loss (sample unlearning) or accuracy (class unlearning) on `data`, in eval mode."""
    logits, y = predict_logits(model, data, job.device, job.request.data.batch_size)
    if by_loss:
        return float(torch.nn.functional.cross_entropy(logits, y))
    return float((logits.argmax(1) == y).float().mean())


def relearn_steps(model: nn.Module, job: Job, original: nn.Module, seed: int) -> Optional[int]:
    """Fine-tuning steps on the forget set until the original's behaviour on it is back (None: not within the budget)."""
    by_loss = job.splits.scenario != "class"
    forget = job.splits.forget
    probe = forget if len(forget) <= RELEARN_EVAL else forget.subset(torch.randperm(len(forget), generator=torch.Generator().manual_seed(seed))[:RELEARN_EVAL])
    goal = _forget_figure(original, probe, job, by_loss)
    reached = (lambda m: _forget_figure(m, probe, job, by_loss) <= goal * (2 - RELEARN_TARGET)) if by_loss else \
              (lambda m: _forget_figure(m, probe, job, by_loss) >= goal * RELEARN_TARGET)
    student = copy.deepcopy(model).to(job.device)
    if reached(student):
        return 0
    opt = torch.optim.Adam(student.parameters(), lr=RELEARN_LR)
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    while steps < RELEARN_MAX_STEPS:
        for x, y in forget.batches(RELEARN_BATCH, shuffle=True, generator=gen):
            student.train()
            loss = job.task.loss(student(x.to(job.device)), y.to(job.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if reached(student):
                return steps
            if steps >= RELEARN_MAX_STEPS:
                break
    return None


# ---------------------------------------------------------------- the tier

def strong_tier(job: Job, unlearned: nn.Module, reference: Optional[nn.Module], unlearned_fields: dict[str, Any],
                shadows: int = DEFAULT_SHADOWS, progress: Progress = None) -> dict[str, Any]:
    """The report's `strong` section: U-LiRA per model, per-example scores, relearn time and AIN."""
    started = time.perf_counter()
    method = unlearned_fields.get("method") if isinstance(unlearned_fields.get("method"), str) else None
    params = unlearned_fields.get("params") if isinstance(unlearned_fields.get("params"), dict) else None
    from ..methods import method_names

    if method not in method_names():
        method, params = None, None
    sh = shadow_statistics(job, method, params, shadows, progress)
    bs = job.request.data.batch_size
    result: dict[str, Any] = {
        "protocol": {"attack": "U-LiRA" if method else "LiRA (the audited model records no method)", "shadows": sh["shadows"],
                     "shadow_method": method, "shadow_params": params, "recipe": sh["recipe"], "statistic": "log(p_y / (1 - p_y))",
                     "fprs": list(FPRS), "relearn": {"lr": RELEARN_LR, "batch_size": RELEARN_BATCH, "max_steps": RELEARN_MAX_STEPS,
                                                    "target": (f"forget accuracy >= {RELEARN_TARGET:g} x the original's" if job.splits.scenario == "class"
                                                               else f"forget mean loss <= {2 - RELEARN_TARGET:g} x the original's")}},
        "cache_hits": sh["cache_hits"], "shadow_time_s": sh["shadow_time_s"], "models": {},
    }
    in_shadow = []
    for j in range(sh["stats"].shape[0]):  # the attack's own power across shadows: IN (leave-one-out) against OUT
        keep = np.ones(sh["stats"].shape[0], bool)
        keep[j] = False
        scores, _ = ulira_scores(sh["stats"][keep], sh["members"][keep], sh["stats"][j])
        in_shadow.append(scores[sh["members"][j]])
    targets = {"unlearned": unlearned, "reference": reference}
    negatives = None
    for name, model in targets.items():
        if model is None:
            continue
        s = logit_confidence(model, job.splits.forget, job.device, bs)
        scores, negatives = ulira_scores(sh["stats"], sh["members"], s)
        entry = roc_summary(scores, negatives)
        entry["per_example"] = [round(float(v), 4) for v in scores]
        entry["relearn_steps"] = relearn_steps(model, job, job.original, job.seed) if job.original is not None else None
        result["models"][name] = entry
        if progress:
            progress("strong audit: targets", len(result["models"]), sum(m is not None for m in targets.values()))
    if negatives is not None:
        result["shadow_attack"] = roc_summary(np.concatenate(in_shadow) if in_shadow else np.zeros(0), negatives)
    u, r = (result["models"].get(k, {}).get("relearn_steps") for k in ("unlearned", "reference"))
    result["ain"] = None if u is None or r is None else (u + 0.01) / (r + 0.01)
    result["time_s"] = round(time.perf_counter() - started, 3)
    return result
