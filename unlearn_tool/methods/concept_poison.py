"""Class unlearning by concept inference and data poisoning (Chang, Zhu et al., arXiv 2405.15662; reference notes §7).

The paper has no public code: this is a reconstruction from its abstract, and every step below is
our plan, refined by measurement (docs/methods.md says which choices are ours and what they gave).

1. Concept bank, in the model's feature space (the input of the final classification layer):
   - `concept_dir` given: one sub-folder per concept of images or .safetensors tensors; each concept
     becomes a concept activation vector, the unit normal of a logistic-regression separator between
     the concept's features and features of random training samples (TCAV / PCBM);
   - default: concepts discovered in the original's own features of the training data (NMF components
     when the features are non-negative, else k-means centroid directions).
2. Post-hoc concept bottleneck: concept scores = features projected on the unit concept vectors,
   standardised over D; a sparse (L1) multinomial logistic head from scores to the *model's*
   predictions; its fidelity (agreement with the model) is reported.
3. Integrated Gradients of the forget class's logit over the concept scores. The head is linear, so IG
   from the baseline b is exact in closed form: IG_i(s) = (s_i - b_i) * W[c, i] (b = 0 = the mean score
   over D after standardising). Concepts are ranked by specificity: mean IG on the forget class minus
   the largest mean IG of the same concept for any other class on its own logit; the top-k are kept.
4. Poisoning: Df is relabelled, `labels: random` (uniform over the retained classes) or `labels: targeted`
   (each sample to the retained class whose mean concept-score vector is nearest), optionally with the
   retained samples most driven by the identified concepts; then fine-tuning on the poisoned data
   together with Dr, as random-label does.
5. `info` names the identified concepts and their attributions, and the head's fidelity.

Class requests only: a sample request is a MethodError.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data import LabelledData
from ..params import IS_PATH
from ..errors import MethodError
from ..training import make_optimizer
from .base import MethodOutput, MethodParams, UnlearnContext, register_method
from .common import mixed_batches, other_labels
from .laf import embed_all, feature_module

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class ConceptPoisonParams(MethodParams):
    concept_dir: Optional[str] = Field(
        None, json_schema_extra=IS_PATH, description="Folder with one sub-folder per concept holding example images or .safetensors tensors (key x, or one tensor; "
                          "already preprocessed like the model's inputs). Default: no bank, concepts are discovered from the model's features.",
    )
    discovery: Literal["auto", "nmf", "kmeans"] = Field(
        "auto", description="How concepts are discovered without a bank: nmf (non-negative features, e.g. after ReLU), kmeans (centroid "
                            "directions), or auto (nmf if the features are non-negative, else kmeans). [ours]",
    )
    num_concepts: Optional[int] = Field(
        None, ge=2, description="Number of discovered concepts. Default: 2 x number of classes, at most the feature width. [ours]",
    )
    feature_layer: Optional[str] = Field(
        None, description="Module whose INPUT is the feature space (flattened). Default: the last nn.Linear (input of the classifier).",
    )
    head_c: float = Field(0.1, gt=0, description="Inverse L1 strength of the sparse concept head (scikit-learn C on standardised scores). [ours]")
    top_k: int = Field(3, ge=1, description="Concepts kept per forgotten class (the most class-specific by Integrated Gradients). [ours]")
    labels: Literal["random", "targeted"] = Field(
        "targeted", description="Poisoned labels of Df: random (uniform over the retained classes) or targeted (per sample, the retained class "
                                "whose mean concept scores are nearest). Default targeted: lower Avg Gap on digits (docs/methods.md).",
    )
    poison_retain: float = Field(
        0.0, ge=0, le=0.5, description="Share of the retained samples, those most driven towards the forgotten class by the identified "
                                       "concepts, that are poisoned too. Default 0 (measured: it costs retain accuracy, docs/methods.md).",
    )
    epochs: int = Field(5, ge=1, description="Fine-tuning passes over poisoned Df + Dr (the random-label default).")
    lr: float = Field(0.01, gt=0, description="Fine-tuning learning rate (the random-label default).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (random-label: 0.9).")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay (random-label: 5e-4).")
    batch_size: int = Field(64, ge=1, description="Fine-tuning batch size (random-label: 64).")
    max_fit_samples: int = Field(
        5000, ge=100, description="At most this many training samples (drawn with the run's seed) fit the concepts and the head; all are scored.",
    )


# ---------------------------------------------------------------- concept bank

def _sklearn_l1_logistic(c: float, seed: int):
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    l1 = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}  # 'penalty' is deprecated from 1.8
    return LogisticRegression(C=c, solver="saga", max_iter=3000, tol=1e-3, random_state=seed, **l1)


def _load_concept_examples(folder: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Every example of one concept folder as a (N, *input_shape) float tensor."""
    xs = []
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                tensors = load_file(str(f))
            except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
                raise MethodError(f"method.params.concept_dir: {f} is not a readable .safetensors file ({type(e).__name__})") from None
            t = tensors.get("x") if "x" in tensors else (next(iter(tensors.values())) if len(tensors) == 1 else None)
            if t is None:
                raise MethodError(f"method.params.concept_dir: {f} holds {len(tensors)} tensors; save one tensor, or the examples under key x")
            t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
            if tuple(t.shape) == input_shape:
                t = t.unsqueeze(0)
            if tuple(t.shape[1:]) != input_shape:
                raise MethodError(f"method.params.concept_dir: {f} has shape {tuple(t.shape)}; the model's inputs are {input_shape} "
                                  f"(give (N, {', '.join(map(str, input_shape))}) or one example)")
            xs.append(t)
        elif suffix in IMAGE_SUFFIXES:
            xs.append(_read_image(f, input_shape).unsqueeze(0))
    if not xs:
        raise MethodError(f"method.params.concept_dir: {folder} has no .safetensors or image file; put examples of the concept there")
    return torch.cat(xs)


def _read_image(path: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """An image in [0, 1] at the model's channels and size (the request's normalisation is not applied)."""
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise MethodError(f"method.params.concept_dir: {path} is an image but the model's inputs have shape {input_shape}; give .safetensors tensors")
    from PIL import Image

    from ..data import read_image
    from ..errors import DataError

    try:  # the data's reader: a FIFO, a truncated file or a decompression bomb is one line, not a hang or a raw warning
        im = read_image(str(path))
    except DataError as e:
        raise MethodError(f"method.params.concept_dir: {e}") from None
    im = im.convert("L" if input_shape[0] == 1 else "RGB").resize((input_shape[2], input_shape[1]), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def concept_folders(folder: Path) -> list[Path]:
    """The concept bank's sub-folders, one per concept (at least 2)."""
    if not folder.is_dir():
        raise MethodError(f"method.params.concept_dir: {folder} is not a folder; give a folder with one sub-folder of examples per concept")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))  # not .ipynb_checkpoints
    if len(subdirs) < 2:
        raise MethodError(f"method.params.concept_dir: {folder} has {len(subdirs)} concept sub-folder(s); give at least 2")
    return subdirs


def concepts_from_bank(ctx: UnlearnContext, model: nn.Module, module: nn.Module, train_feats: torch.Tensor,
                       folder: Path, seed: int) -> tuple[list[str], torch.Tensor, list[dict]]:
    """(names, unit concept vectors (K, d), per-concept notes): one logistic-regression CAV per sub-folder vs random samples."""
    from sklearn.linear_model import LogisticRegression

    subdirs = concept_folders(folder)
    input_shape = ctx.splits.train.input_shape()
    gen = ctx.generator(73)
    names, vectors, notes = [], [], []
    images_used = False
    for sub in subdirs:
        x = _load_concept_examples(sub, input_shape)
        images_used |= any(p.suffix.lower() in IMAGE_SUFFIXES for p in sub.iterdir())
        if len(x) < 2:
            raise MethodError(f"method.params.concept_dir: concept {sub.name!r} has {len(x)} example; give at least 2")
        pos = embed_all(model, module, LabelledData.from_tensors(x, torch.zeros(len(x), dtype=torch.long)), ctx.device).cpu()
        k = min(len(train_feats), max(len(pos), 50))
        neg = train_feats[torch.randperm(len(train_feats), generator=gen)[:k]]
        xy = torch.cat([pos, neg]).numpy()
        lab = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(xy, lab)
        w = torch.from_numpy(clf.coef_[0]).float()
        names.append(sub.name)
        vectors.append(w / w.norm().clamp_min(1e-12))
        notes.append({"examples": len(x), "separability": round(float(clf.score(xy, lab)), 4)})
    if images_used:
        ctx.log.append("concept-poison: concept images were read in [0, 1] at the model's input size without the request's normalisation; "
                       "give .safetensors tensors preprocessed like the training data if the request normalises")
    return names, torch.stack(vectors), notes


def discover_concepts(feats: torch.Tensor, k: int, how: str, seed: int) -> tuple[torch.Tensor, str]:
    """Unit concept vectors (k, d) found in the features: NMF components or k-means centroid directions (centred)."""
    x = feats.numpy().astype(np.float64)
    if how == "auto":
        how = "nmf" if float(x.min()) >= 0 else "kmeans"
    if how == "nmf":
        if float(x.min()) < 0:
            raise MethodError("method.params.discovery: nmf needs non-negative features and these have negative values; use kmeans or auto")
        from sklearn.decomposition import NMF

        with warnings.catch_warnings():  # a loose fit still gives usable directions; the head's fidelity is what is reported
            warnings.simplefilter("ignore", _convergence_warning())
            comps = NMF(n_components=k, init="nndsvda", max_iter=400, tol=1e-3, random_state=seed).fit(x).components_
    else:
        from sklearn.cluster import KMeans

        centred = x - x.mean(0, keepdims=True)
        comps = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(centred).cluster_centers_
    v = torch.from_numpy(comps).float()
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12), how


# ---------------------------------------------------------------- bottleneck, attribution

def fit_head(scores: np.ndarray, preds: np.ndarray, c: float, seed: int):
    """The sparse linear head from standardised concept scores to the model's predicted classes."""
    with warnings.catch_warnings():  # saga may stop at max_iter on hard heads; fidelity (reported) shows what it achieved
        warnings.simplefilter("ignore", _convergence_warning())
        return _sklearn_l1_logistic(c, seed).fit(scores, preds)


def class_weights(head, num_classes: int) -> np.ndarray:
    """(num_classes, K) logit weights; classes the head never saw get zero rows (they have no logit to explain)."""
    w = np.zeros((num_classes, head.coef_.shape[1]))
    coef = head.coef_
    if len(head.classes_) == 2 and coef.shape[0] == 1:  # binary: one row, for the positive class
        w[head.classes_[1]] = coef[0]
        w[head.classes_[0]] = -coef[0]
    else:
        w[head.classes_] = coef
    return w


def integrated_gradients(scores: np.ndarray, weight_row: np.ndarray, baseline: Optional[np.ndarray] = None) -> np.ndarray:
    """IG of a linear logit w.s + b over the scores, per sample: (s - baseline) * w (exact for a linear function)."""
    base = np.zeros(scores.shape[1]) if baseline is None else baseline
    return (scores - base) * weight_row


# ---------------------------------------------------------------- the method

def run(ctx: UnlearnContext, p: ConceptPoisonParams) -> MethodOutput:
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # scikit-learn's BLAS threads follow torch's thread count (on a busy 2-core machine, 2 BLAS threads made NMF 5x slower)
    with threadpool_limits(limits=max(1, torch.get_num_threads())):
        return _run(ctx, p)


def _run(ctx: UnlearnContext, p: ConceptPoisonParams) -> MethodOutput:
    if ctx.scenario != "class":
        raise MethodError("concept-poison unlearns whole classes (it explains a class through concepts); this request forgets samples by "
                          "index: use forget.classes, or a sample method such as rfa")
    device = ctx.device
    train = ctx.splits.train
    forget_classes = list(ctx.splits.forget_classes)
    retained_classes = [c for c in range(ctx.num_classes) if c not in forget_classes]
    if not retained_classes:
        raise MethodError("concept-poison: every class is forgotten, so there is no class to relabel Df with")
    seed = int(ctx.seed) % (2**31 - 1)
    original = ctx.original
    layer, module = feature_module(original, p.feature_layer)

    # features and the model's own predictions on D (one forward pass)
    feats = embed_all(original, module, train, device).cpu()
    with torch.no_grad():
        preds = torch.cat([original(x.to(device)).argmax(1).cpu() for x, _ in train.batches(256)]).numpy()
    gen = ctx.generator(71)
    fit_idx = torch.randperm(len(train), generator=gen)[: p.max_fit_samples]
    fit_idx = fit_idx.sort().values

    # 1. concept bank
    if p.concept_dir:
        names, vectors, notes = concepts_from_bank(ctx, original, module, feats, Path(p.concept_dir).expanduser(), seed)
        source = "bank"
    else:
        k = min(p.num_concepts or 2 * ctx.num_classes, feats.shape[1])
        vectors, source = discover_concepts(feats[fit_idx], k, p.discovery, seed)
        names = [f"concept_{i:02d}" for i in range(len(vectors))]
        notes = [{} for _ in names]
    ctx.report("concept-poison: concepts", 1, 3)

    # 2. post-hoc concept bottleneck: standardised projections, sparse head to the model's predictions
    raw = (feats @ vectors.T).numpy().astype(np.float64)
    mean, std = raw[fit_idx.numpy()].mean(0), raw[fit_idx.numpy()].std(0) + 1e-8
    scores = (raw - mean) / std
    head = fit_head(scores[fit_idx.numpy()], preds[fit_idx.numpy()], p.head_c, seed)
    fidelity = float((head.predict(scores) == preds).mean())
    test_feats = embed_all(original, module, ctx.splits.test, device).cpu()
    with torch.no_grad():
        test_preds = torch.cat([original(x.to(device)).argmax(1).cpu() for x, _ in ctx.splits.test.batches(256)]).numpy()
    test_scores = ((test_feats @ vectors.T).numpy().astype(np.float64) - mean) / std
    fidelity_test = float((head.predict(test_scores) == test_preds).mean())
    W = class_weights(head, ctx.num_classes)
    ctx.report("concept-poison: concept head", 2, 3)

    # 3. IG per class on its own logit (baseline: the mean score, 0 after standardising); specificity to the forget class
    labels_all = train.targets.numpy()
    mean_ig = np.zeros((ctx.num_classes, scores.shape[1]))
    for c in range(ctx.num_classes):
        members = labels_all == c
        if members.any():
            mean_ig[c] = integrated_gradients(scores[members], W[c]).mean(0)
    others = np.delete(mean_ig, forget_classes, axis=0)  # each retained class's mean IG on its own logit
    specificity = mean_ig - others.max(0, keepdims=True)
    selected: dict[int, list[int]] = {}
    concept_info = []
    for c in forget_classes:
        present = scores[labels_all == c].mean(0) > 0  # the concept is stronger in the class than on average...
        candidates = [int(i) for i in np.argsort(-specificity[c], kind="stable")
                      if mean_ig[c, i] > 0 and W[c, i] > 0 and present[i]]  # ...and its presence raises the class's logit
        selected[c] = candidates[: p.top_k]
        for i in selected[c]:
            by_class = sorted(((int(k), float(raw[labels_all == k, i].mean())) for k in range(ctx.num_classes) if (labels_all == k).any()),
                              key=lambda t: -t[1])
            concept_info.append({
                "forget_class": c, "concept": names[i], "index": i,
                "attribution": round(float(mean_ig[c, i]), 5),
                "max_other_class_attribution": round(float(others[:, i].max()), 5),
                "specificity": round(float(specificity[c, i]), 5),
                "head_weight": round(float(W[c, i]), 5),
                "strongest_in_classes": [k for k, _ in by_class[:3]],
                **notes[i],
            })

    # 4. poisoning
    forget_idx, retain_idx = ctx.splits.forget_idx, ctx.splits.retain_idx
    label_gen = ctx.generator(72)
    exclude = forget_classes
    retained = np.array(retained_classes)
    centroids = np.stack([scores[labels_all == k].mean(0) if (labels_all == k).any() else np.full(scores.shape[1], np.inf)
                          for k in retained])

    def poisoned_labels(idx: torch.Tensor) -> torch.Tensor:
        true = train.targets[idx]
        if p.labels == "random":
            return other_labels(true, ctx.num_classes, label_gen, exclude=exclude)
        d = ((scores[idx.numpy()][:, None, :] - centroids[None]) ** 2).sum(-1)  # (n, retained classes)
        d[retained[None, :] == true.numpy()[:, None]] = np.inf  # never the true label
        return torch.from_numpy(retained[d.argmin(1)]).long()

    f_labels = poisoned_labels(forget_idx)
    n_retain_poison = int(round(p.poison_retain * len(retain_idx)))
    retain_labels = train.targets[retain_idx].clone()
    if n_retain_poison:
        drive = np.zeros(len(retain_idx))
        r_scores = scores[retain_idx.numpy()]
        for c, order in selected.items():
            drive = np.maximum(drive, integrated_gradients(r_scores[:, order], W[c, order]).sum(1))
        chosen = torch.from_numpy(np.argsort(-drive, kind="stable")[:n_retain_poison].copy()).long()
        retain_labels[chosen] = poisoned_labels(retain_idx[chosen])
    ctx.report("concept-poison: poisoned labels", 3, 3)

    # fine-tune on poisoned Df together with Dr (mixed, shuffled), as random-label does
    model = ctx.student().train()
    opt = make_optimizer(model.parameters(), "sgd", p.lr, p.weight_decay, p.momentum)
    gen_b = ctx.generator(74)
    forget, retain = ctx.forget, ctx.retain
    steps, loss = 0, torch.tensor(float("nan"))
    for epoch in range(p.epochs):
        for x, i_f, i_r in mixed_batches(forget, retain, p.batch_size, gen_b):
            y = torch.cat([f_labels[i_f], retain_labels[i_r]])
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        ctx.report("concept-poison", epoch + 1, p.epochs)

    counts = torch.bincount(f_labels, minlength=ctx.num_classes)
    info = {
        "concept_source": source if source == "bank" else f"discovered ({source})",
        "num_concepts": len(names),
        "feature_layer": layer,
        "head_fidelity_train": round(fidelity, 4),
        "head_fidelity_test": round(fidelity_test, 4),
        "head_nonzero_weights": int((np.abs(W) > 0).sum()),
        "concepts": concept_info,
        "labels": p.labels,
        "forget_label_counts": {int(k): int(v) for k, v in enumerate(counts.tolist()) if v},
        "poisoned_retain": n_retain_poison,
        "steps": steps,
        "last_loss": round(float(loss.detach()), 6),
    }
    return MethodOutput(model=model.eval(), info=info)


def _convergence_warning() -> type:
    from sklearn.exceptions import ConvergenceWarning  # imported when used: listing methods need not load scikit-learn

    return ConvergenceWarning


def preflight(ctx: UnlearnContext, p: ConceptPoisonParams) -> None:
    """The feature layer exists and the concept bank is laid out as one folder per concept (read in full when run)."""
    feature_module(ctx.original, p.feature_layer)
    if p.concept_dir:
        concept_folders(Path(p.concept_dir).expanduser())


register_method(
    "concept-poison", ConceptPoisonParams, run,
    summary="Class unlearning: find the forget class's concepts (post-hoc concept bottleneck + Integrated Gradients), poison its labels, fine-tune.",
    reference="Chang, Zhu et al. 2024, arXiv 2405.15662 (no public code; reconstructed, see docs/methods.md)",
    scenarios=("class",), preflight=preflight,
)
