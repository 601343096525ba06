"""RFA in the paper's setting, offline: a ViT pre-trained on one task, fine-tuned on another, then made to forget.

    python benchmarks/pretrained_digits.py                       # target-layer sweep + baselines, 3 seeds, both scenarios
    python benchmarks/pretrained_digits.py --seeds 1 --methods finetune,scrub --variants all,attention
    python benchmarks/pretrained_digits.py --arch resnet         # the same scenario with a small timm ResNet

A stand-in, runnable here without downloads, for "CIFAR-10 fine-tuned from an ImageNet backbone" (the paper's
setting). Real data: scikit-learn's digits, upsampled from 8x8 to 16x16.

- Pre-training corpus (the "ImageNet" stand-in): digits 0-4 of the train split, upright and rotated by 180 degrees
  (10 classes: digit x orientation), 4 randomly shifted/rotated copies of each (about 5,700 images).
- Fine-tuning task (the "CIFAR-10" stand-in): digits 5-9 of the train split, upright, relabelled 0-4 (about 720
  images); test: digits 5-9 of the test split (about 180). The model is the pre-trained network with a fresh 5-class
  head (`unlearn train --init`), all weights fine-tuned.
- Unlearning: forget fine-tuning class 3 (digit 8), or a fixed random 10% of the fine-tuning train set.
- Reference (gold standard): the fine-tuning retrained on the retain set from the same pre-trained checkpoint
  (`unlearn train --init PRE --exclude-forget`), per seed, init seed s + 100; its time is the retraining time.
- Every method runs on each seed's fine-tuned model with its default parameters and is audited (unlearn_tool.bench,
  the same code as `unlearn bench`); RFA runs once per target-layer selection (--variants).
Model: a Hugging Face ViTForImageClassification (hf:<folder>; 4 layers, hidden 64, 4 heads, MLP 128, patch 4, 16
tokens), or with --arch resnet a timm resnet18 shrunk to widths 16-64 (one block per stage).
Prints the sweep and the comparison as markdown tables, with machine and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearn_tool import bench as B  # noqa: E402
from unlearn_tool.artifacts import CheckpointArtifact  # noqa: E402
from unlearn_tool.checkpoint import save_canonical  # noqa: E402
from unlearn_tool.job import prepare, seed_everything  # noqa: E402
from unlearn_tool.methods import get_method  # noqa: E402
from unlearn_tool.pipeline import init_from, utility  # noqa: E402
from unlearn_tool.training import TrainConfig, fit  # noqa: E402

SIZE = 16
VIT = dict(image_size=SIZE, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
           intermediate_size=128)
RESNET = {"in_chans": 1, "layers": [1, 1, 1, 1], "channels": [16, 32, 64, 64], "stem_width": 16}
VARIANTS = {  # RFA target-layer selections (lora.select_layers keywords)
    "all": "all", "attention": "attention", "mlp": "mlp", "attention+head": ["attention", "head"],
    "blocks:1": "blocks:1", "blocks:2": "blocks:2", "head": "head",
}
CNN_VARIANTS = {"all": "all", "last:4": "last:4", "last:2": "last:2", "head": "head"}
BASELINES = "finetune,neggrad,neggrad+,random-label,salun,l1-sparse,scrub,bad-teacher,boundary-shrink,ssd,blindspot"
PRETRAIN = TrainConfig(epochs=15, lr=1e-3)
FINETUNE = TrainConfig(epochs=20, lr=5e-4)

REQUEST = """
version: 1
id: pretrained-digits-{name}
model: {{arch: "{arch}", kwargs: {kwargs}}}
data: {{train: {{source: tensors, path: {train}}}, test: {{source: tensors, path: {test}}}, batch_size: 256}}
forget: {forget}
seed: 0
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data

def digits_16() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """All 1797 digits at 16x16 in [0, 1], labels, and the library's own train/test split of them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from unlearn_tool.data import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE

    d = load_digits()
    x = F.interpolate(torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None], size=(SIZE, SIZE), mode="bilinear",
                      align_corners=False)
    tr, te = train_test_split(np.arange(len(d.target)), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=d.target)
    return x.clamp(0, 1), torch.from_numpy(d.target).long(), tr, te


def augment(x: torch.Tensor, copies: int, gen: torch.Generator) -> torch.Tensor:
    """`copies` randomly shifted (up to 2 px) and rotated (up to 10 degrees) versions of each image."""
    out = []
    for _ in range(copies):
        n = len(x)
        angle = (torch.rand(n, generator=gen) * 2 - 1) * np.deg2rad(10)
        shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * 2 / SIZE)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out.append(F.grid_sample(x, grid, align_corners=False, padding_mode="zeros"))
    return torch.cat(out)


def write_tensors(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    save_canonical({"x": x.contiguous(), "y": y.contiguous()}, path)


def build_data(work: Path) -> dict[str, int]:
    x, y, tr, te = digits_16()
    gen = torch.Generator().manual_seed(0)

    def pretrain_set(idx: np.ndarray, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        keep = idx[(y[idx] < 5).numpy()]
        base_x = torch.cat([x[keep], x[keep].flip(2, 3)])  # upright, then rotated by 180 degrees
        base_y = torch.cat([y[keep], y[keep] + 5])
        if copies:
            base_x, base_y = augment(base_x, copies, gen), base_y.repeat(copies)
        return base_x, base_y

    sizes = {}
    for name, (bx, by) in {"pre_train": pretrain_set(tr, 4), "pre_test": pretrain_set(te, 0)}.items():
        write_tensors(work / f"{name}.safetensors", bx, by)
        sizes[name] = len(by)
    for name, idx in {"ft_train": tr, "ft_test": te}.items():
        keep = idx[(y[idx] >= 5).numpy()]
        write_tensors(work / f"{name}.safetensors", x[keep], y[keep] - 5)
        sizes[name] = len(keep)
    return sizes


# ---------------------------------------------------------------- models and requests

def arch_of(args, work: Path, classes: int) -> tuple[str, str]:
    """(model.arch, model.kwargs as YAML) for the pre-training (10 classes) or fine-tuning (5 classes) task."""
    if args.arch == "resnet":
        return "timm:resnet18", json.dumps({**RESNET, "num_classes": classes})
    folder = work / f"vit{classes}"
    if not (folder / "config.json").exists():
        from transformers import ViTConfig

        ViTConfig(**VIT, num_labels=classes).save_pretrained(str(folder))
    return f"hf:{folder.name}", "{}"


def write_request(args, work: Path, name: str, classes: int, data: str, forget: str) -> Path:
    arch, kwargs = arch_of(args, work, classes)
    path = work / f"{args.arch}-{name}.yaml"
    path.write_text(REQUEST.format(name=name, arch=arch, kwargs=kwargs, train=f"{data}_train.safetensors",
                                   test=f"{data}_test.safetensors", forget=forget))
    return path


def train(job, data, seed: int, config: TrainConfig, init: Path | None = None):
    """A model of the job's architecture (init seed `seed`; from `init` when given), trained on `data`."""
    seed_everything(seed)
    model = job.for_seed(seed).make_model()
    if init is not None:
        init_from(model, CheckpointArtifact(init), job.request.model.arch)
    start = time.perf_counter()
    fit(model, data, config, job.device, torch.Generator().manual_seed(seed))
    return model.eval(), time.perf_counter() - start


def pretrain(args, work: Path) -> tuple[Path, dict]:
    path = work / f"pretrained-{args.arch}.safetensors"
    job = prepare(write_request(args, work, "pretrain", 10, "pre", "{classes: [0]}"), None, device="cpu")
    if path.exists():
        return path, {"cached": True}
    model, wall = train(job, job.splits.train, 0, PRETRAIN)
    save_canonical({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    acc = utility(model, job)["test_acc"]
    log(f"# pre-trained {args.arch} on {len(job.splits.train)} images in {wall:.0f}s: test acc {acc:.3f}")
    return path, {"wall_s": wall, "test_acc": acc}


# ---------------------------------------------------------------- one scenario

def seed_setup(args, req: Path, s: int, pre: Path) -> tuple[B.SeedSetup, dict]:
    """Seed s: the fine-tuned original, the retrained fine-tune (init seed s + 100), and the noise floor: another
    retrained fine-tune (init seed s + 200) measured against the first."""
    job = prepare(req, None, device="cpu", seed=s)
    original, t_orig = train(job, job.splits.train, s, FINETUNE, pre)
    retrained, t_retrain = train(job, job.splits.retain, s + 100, FINETUNE, pre)
    other, t_other = train(job, job.splits.retain, s + 200, FINETUNE, pre)
    job.original = original
    ref = B.baseline_run(retrained, job, t_retrain)
    ref["metrics"]["time_fraction"] = 1.0
    orig = B.with_gap(B.baseline_run(original, job), ref)
    floor = B.with_gap(B.baseline_run(other, job, t_other), ref)
    m = ref["metrics"]
    log(f"# {req.stem} seed {s}: fine-tuned in {t_orig:.1f}s (test acc {orig['metrics']['test_acc']:.3f}), "
        f"retrained fine-tune in {t_retrain:.1f}s (forget acc {m['forget_acc']:.3f}, test acc {m['test_acc']:.3f}); "
        f"another retraining's gap {floor['metrics']['avg_gap']:.2f}")
    return B.SeedSetup(job, orig, ref, t_retrain), floor


def run_scenario(args, req: Path, pre: Path, variants: dict, methods: list[str]) -> dict:
    pairs = [seed_setup(args, req, s, pre) for s in range(args.first_seed, args.first_seed + args.seeds)]
    setups = [p[0] for p in pairs]
    entries = {"retrain (other seed)": B.summarize("retrain (other seed)", [p[1] for p in pairs], FINETUNE.model_dump())}
    for label, targets in variants.items():
        params = B.method_params("rfa", {"target_layers": targets})
        runs = []
        for setup in setups:
            r = B.run_one(setup, "rfa", params)
            runs.append(r)
            mm = r["metrics"]
            log(f"  rfa [{label}] seed {setup.seed}: " + (r["error"] or f"forget {mm['forget_acc']:.3f} test {mm['test_acc']:.3f} "
                                                             f"gap {mm['avg_gap']:.2f} {mm['wall_time_s']:.2f}s steps {r['info'].get('steps')}"))
        entries[f"rfa [{label}]"] = B.summarize(f"rfa [{label}]", runs, params.model_dump(mode="json"))
        entries[f"rfa [{label}]"]["steps"] = [r["info"].get("steps") for r in runs]
    scenario = setups[0].job.splits.scenario
    names = [m for m in methods if scenario in get_method(m).scenarios]
    params = {m: B.method_params(m, {"use_cache": False} if m == "ssd" else {}) for m in names}

    def on_run(name, seed, r):
        mm = r["metrics"]
        log(f"  {name} seed {seed}: " + (r["error"] or f"forget {mm['forget_acc']:.3f} test {mm['test_acc']:.3f} gap {mm['avg_gap']:.2f} {mm['wall_time_s']:.2f}s"))

    entries.update(B.run_methods(setups, names, params, on_run=on_run))
    return B.assemble(setups[0].job, [s.seed for s in setups], "reference", entries,
                      B.summarize("original", [s.original for s in setups], kind="original"),
                      B.summarize("retrained fine-tune", [s.baseline for s in setups], FINETUNE.model_dump(), kind="reference"),
                      {"kind": "fine-tuning retrained on the retain set from the pre-trained checkpoint, init seed s + 100"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("vit", "resnet"), default="vit")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--scenarios", default="class,sample")
    ap.add_argument("--variants", default="all", help="RFA target selections, comma-separated, or 'all' (the whole sweep)")
    ap.add_argument("--methods", default=BASELINES, help=f"baselines (default {BASELINES}); '' for none")
    ap.add_argument("--work", type=Path, default=Path("bench_pretrained"), help="data, configs and checkpoints (reused)")
    ap.add_argument("--out", type=Path, default=None, help="also write bench.json/.md/.csv/.png per scenario here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pool = CNN_VARIANTS if args.arch == "resnet" else VARIANTS
    variants = pool if args.variants == "all" else {v: pool[v] for v in args.variants.split(",") if v}
    methods = B.select_methods(args.methods) if args.methods else []
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sizes = build_data(args.work)
    pre, pre_info = pretrain(args, args.work)
    n_ft = sizes["ft_train"]
    sample = sorted(int(i) for i in np.random.default_rng(0).choice(n_ft, n_ft // 10, replace=False))
    reqs = {"class": write_request(args, args.work, "finetune-class", 5, "ft", "{classes: [3]}"),
            "sample": write_request(args, args.work, "finetune-sample", 5, "ft", "{indices: " + str(sample) + "}")}
    # the value of pre-training: the fine-tuning task trained from scratch
    job = prepare(reqs["class"], None, device="cpu")
    scratch, t_scratch = train(job, job.splits.train, 0, FINETUNE)
    scratch_acc = utility(scratch, job)["test_acc"]
    results = {}
    for scenario in args.scenarios.split(","):
        results[scenario] = run_scenario(args, reqs[scenario], pre, variants, methods)
        if args.out:
            (args.out / args.arch).mkdir(parents=True, exist_ok=True)
            B.write_bench(results[scenario], args.out / args.arch / scenario)
    arch = "HF ViTForImageClassification " + json.dumps(VIT) if args.arch == "vit" else "timm:resnet18 " + json.dumps(RESNET)
    print(f"Pre-trained then fine-tuned (digits stand-in for CIFAR-10 on an ImageNet backbone): {arch}; "
          f"pre-training {sizes['pre_train']} images, {PRETRAIN.epochs} epochs (test acc {pre_info.get('test_acc', 'cached')}); "
          f"fine-tuning {sizes['ft_train']} train / {sizes['ft_test']} test images, {FINETUNE.epochs} epochs of Adam {FINETUNE.lr}; "
          f"the same task from scratch reaches test acc {scratch_acc:.3f} ({t_scratch:.1f}s). "
          f"Seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, mean±std. "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), load average at the end {os.getloadavg()[0]:.1f}; total {time.perf_counter() - started:.0f}s.\n")
    for scenario, bench in results.items():
        what = "forget fine-tuning class 3 (digit 8)" if scenario == "class" else f"forget {len(sample)} random fine-tuning samples (10%)"
        print(f"## {scenario} unlearning: {what}\n")
        print(B.markdown_table(bench))
        steps = {n: e.get("steps") for n, e in bench["methods"].items() if e.get("steps")}
        print("RFA steps per seed: " + "; ".join(f"{n} {v}" for n, v in steps.items()))
        rt = bench["retrain_time_s"]
        print(f"Retraining the fine-tune: {rt['mean']:.2f}±{rt['std'] or 0:.2f}s. Accuracies, MIA-Efficacy and time fractions in %, "
              "Avg Gap to the retrained fine-tune in points.\n")
    for scenario, bench in results.items():
        best = B.best_method(bench, exclude=("retrain (other seed)",))
        print(f"lowest Avg Gap, {scenario}: {best} ({bench['methods'][best]['metrics']['avg_gap']['mean']:.2f})" if best else "")


if __name__ == "__main__":
    main()
