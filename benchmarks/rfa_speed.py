"""RFA-LoRA time against retraining, with quality, on built-in and user-style models (issue 9).

    python benchmarks/rfa_speed.py                                  # every case, 3 seeds, class + 10% sample
    python benchmarks/rfa_speed.py --cases user_resnet8 --seeds 1   # one case
    python benchmarks/rfa_speed.py --param lr=1e-2 --param rank=4   # RFA parameter overrides (an ablation row)
    python benchmarks/rfa_speed.py --variants                       # every variant in VARIANTS, same originals

Every run goes through the tool's real path: a deletion request (YAML) is written into a work folder,
the user architectures are loaded from `python:rfa_user_models:<callable>` (rfa_user_models.py is copied
beside the request), the original and the retrained reference are trained by `pipeline.train_checkpoint`
(what `unlearn train [--exclude-forget]` runs) and RFA runs through `pipeline.prepare` + `pipeline.apply`
(what `unlearn apply --json` runs). "RFA time" is apply's wall_time_s (the method alone, as `apply --json`
reports it); "retrain" is the wall time of training the same recipe on the retained data, measured in the
same process right before the RFA runs of that seed.

Cases (recipe = the original's and the reference's training):
  mlp            builtin:mlp on sklearn digits (1437/360), Adam 1e-3, 40 epochs (TrainConfig defaults)
  small_cnn      builtin:small_cnn on sklearn digits, Adam 1e-3, 40 epochs
  user_cnn15     2 conv + 2 linear on 28x28 augmented digits (4311 train / 1080 test), Adam 1e-3, 15 epochs
  user_cnn10     the same, 10 epochs
  user_resnet8   3 residual blocks with BatchNorm (77k params), same data, SGD 0.05 cosine, wd 5e-4, 8 epochs
  user_resnet2   the same, 2 epochs (a short recipe: a less confident model)
  user_cnn3      user_cnn15 with 3 epochs
  user_mlp60     64-128-64-10 MLP, sklearn digits with a random 1437/360 split, Adam 1e-3, 60 epochs
  resnet18_gen   torchvision ResNet-18 (CIFAR stem) on GENERATED CIFAR-shaped data (1000 train), SGD, 4 epochs
                 (only with --cases resnet18_gen: expensive on a CPU; not CIFAR-10)
Scenarios: class (forget class 3) and sample (a random 10% of the train split, rng(seed)).
Quality targets: class — remaining-class test accuracy within 1 point of the original; sample — forget-set
accuracy within 2 points of the retrained model's. Time target: RFA time <= 5% of retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import rfa_user_models as U  # noqa: E402
from unlearn_tool.pipeline import prepare, train_checkpoint  # noqa: E402
from unlearn_tool.request import parse_key_values  # noqa: E402
from unlearn_tool.training import TrainConfig  # noqa: E402

DIGITS = {"source": "sklearn:digits"}
CASES = {
    "mlp": dict(arch="builtin:mlp", data="digits", train=TrainConfig()),
    "small_cnn": dict(arch="builtin:small_cnn", data="digits", train=TrainConfig()),
    "user_cnn15": dict(arch="python:rfa_user_models:user_cnn", data="digits28", train=TrainConfig(epochs=15)),
    "user_cnn10": dict(arch="python:rfa_user_models:user_cnn", data="digits28", train=TrainConfig(epochs=10)),
    "user_resnet8": dict(arch="python:rfa_user_models:user_resnet", data="digits28",
                         train=TrainConfig(epochs=8, optimizer="sgd", lr=0.05, weight_decay=5e-4)),
    "user_resnet2": dict(arch="python:rfa_user_models:user_resnet", data="digits28",
                         train=TrainConfig(epochs=2, optimizer="sgd", lr=0.05, weight_decay=5e-4)),
    "user_cnn3": dict(arch="python:rfa_user_models:user_cnn", data="digits28", train=TrainConfig(epochs=3)),
    "user_mlp60": dict(arch="python:rfa_user_models:user_mlp", data="digits8_random", train=TrainConfig(epochs=60)),
    "resnet18_gen": dict(arch="python:rfa_user_models:cifar_resnet18", data="cifar_like",
                         train=TrainConfig(epochs=4, optimizer="sgd", lr=0.05, weight_decay=5e-4)),
}
DEFAULT_CASES = "mlp,small_cnn,user_cnn15,user_cnn10,user_resnet8,user_mlp60"
FORGET_CLASS = 3

# Named RFA parameter sets for --variants (the ablation rows recorded in docs/rfa.md, "Speed: what was tried").
VARIANTS: dict[str, dict] = {
    "default": {},
    # sample unlearning only (w_forget 10 would change class unlearning): 10 fixed passes, lr decayed to 0 (docs/rfa.md)
    "cosine10": {"lr_schedule": "cosine", "epochs": 10, "stop": "epochs", "w_forget": 10},
    # class unlearning only: stop once retained agreement has not improved for 5 checks, keep the best check's adapters
    "patience5": {"agreement_patience": 5},
    "patience3": {"agreement_patience": 3},
}


def apply_cli(request: Path, checkpoint: Path, output: Path, params: dict, code: Path = HERE.parent) -> dict:
    """`python -m cli apply --json` in a fresh process (cold, as a user runs it), one torch thread, with the tool
    checked out at `code` (this one by default); its JSON."""
    cmd = [sys.executable, "-m", "cli", "apply", str(checkpoint), "-r", str(request), "-o", str(output), "--json",
           "--force", "--quiet", "--device", "cpu"]
    for k, v in params.items():
        cmd += ["--param", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads())}
    r = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"apply failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_data(folder: Path, kind: str) -> tuple[dict, dict, int]:
    """Data files for a case; returns (train spec, test spec, train size)."""
    from safetensors.torch import save_file

    if kind == "digits":
        return DIGITS, DIGITS, 1437
    make = {"digits28": U.digits28, "digits8_random": U.digits8_random_split, "cifar_like": U.cifar_like}[kind]
    xtr, ytr, xte, yte = make(0)
    save_file({"x": xtr, "y": ytr}, str(folder / "train.safetensors"))
    save_file({"x": xte, "y": yte}, str(folder / "test.safetensors"))
    return ({"source": "tensors", "path": "train.safetensors"}, {"source": "tensors", "path": "test.safetensors"}, len(ytr))


def write_request(folder: Path, name: str, case: dict, train_spec: dict, test_spec: dict, forget: dict, seed: int,
                  params: dict) -> Path:
    req = {"version": 1, "id": f"speed-{name}", "model": {"arch": case["arch"], "kwargs": {"num_classes": 10}},
           "data": {"train": train_spec, "test": test_spec}, "forget": forget,
           "method": {"name": "rfa", "params": params}, "seed": seed}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(req)), sort_keys=False))  # no shared objects: requests refuse YAML aliases
    return path


def run_case(case_name: str, seeds: list[int], scenarios: list[str], variants: dict[str, dict], work: Path,
             compare: dict[str, Path], floor: bool) -> list[dict]:
    case = CASES[case_name]
    folder = work / case_name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "rfa_user_models.py", folder / "rfa_user_models.py")
    train_spec, test_spec, n_train = write_data(folder, case["data"])
    rows = []
    for seed in seeds:
        # one original per seed (trained on the full train split), shared by both scenarios
        base_req = write_request(folder, f"orig{seed}", case, train_spec, test_spec, {"classes": [FORGET_CLASS]}, seed, {})
        orig_ckpt = folder / f"orig{seed}.safetensors"
        tr = train_checkpoint(prepare(base_req, device="cpu"), orig_ckpt, case["train"], force=True)
        log(f"# {case_name} seed {seed}: original trained in {tr['wall_time_s']:.1f}s (test acc {tr['test_acc']:.3f})")
        for scenario in scenarios:
            if scenario == "class":
                forget = {"classes": [FORGET_CLASS]}
            else:
                idx = np.random.default_rng(seed).choice(n_train, n_train // 10, replace=False)
                forget = {"indices": sorted(int(i) for i in idx)}
            req = write_request(folder, f"{scenario}{seed}", case, train_spec, test_spec, forget, seed, {})
            job = prepare(req, device="cpu")
            ref = train_checkpoint(job, folder / f"ret_{scenario}{seed}.safetensors", case["train"], exclude_forget=True, force=True)
            ref2 = None
            if floor and scenario == "sample":  # retraining's own spread: a second reference from another initialisation
                ref2 = train_checkpoint(prepare(req, device="cpu", seed=seed + 1000), folder / f"ret2_{scenario}{seed}.safetensors",
                                        case["train"], exclude_forget=True, force=True)["forget_acc"]
            runs = [(name, params, HERE.parent) for name, params in variants.items()] + [(name, {}, code) for name, code in compare.items()]
            for vname, params, code in runs:
                res = apply_cli(req, orig_ckpt, folder / f"u_{scenario}{seed}.safetensors", params, code)
                row = {"case": case_name, "scenario": scenario, "seed": seed, "variant": vname, "t_rfa": res["wall_time_s"],
                       "t_retrain": ref["wall_time_s"], "before": res["before"], "after": res["after"],
                       "ref": {k: ref[k] for k in ("retain_acc", "forget_acc", "test_acc", "test_remaining_acc") if k in ref},
                       "info": res["info"], "ref2_forget_acc": ref2}
                rows.append(row)
                log(f"  {scenario:6s} {vname:28s} RFA {row['t_rfa']:6.3f}s / retrain {ref['wall_time_s']:6.2f}s = "
                    f"{100 * row['t_rfa'] / ref['wall_time_s']:5.1f}%  steps {row['info'].get('steps')}  "
                    f"{quality_str(row)}  {'OK' if all(checks(row).values()) else 'MISS ' + ','.join(k for k, v in checks(row).items() if not v)}")
    return rows


def process_ratio(case_name: str, work: Path, repeats: int) -> list[dict]:
    """Whole processes, as a user runs them: `python -m cli train --exclude-forget` (the recipe's flags) against
    `python -m cli apply --json` on the same request, alternating, `repeats` times each; wall times measured
    from outside, start-up included. Uses the seed-0 sample and class requests written by run_case."""
    case, folder = CASES[case_name], work / case_name
    cfg = case["train"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads())}
    out = []
    for scenario in ("class", "sample"):
        req = folder / f"{scenario}0.yaml"
        train = [sys.executable, "-m", "cli", "train", "-r", str(req), "-o", str(folder / "proc_ret.safetensors"), "--exclude-forget",
                 "--epochs", str(cfg.epochs), "--lr", str(cfg.lr), "--optimizer", cfg.optimizer, "--batch-size", str(cfg.batch_size),
                 "--json", "--quiet", "--force", "--device", "cpu"]
        apply = [sys.executable, "-m", "cli", "apply", str(folder / "orig0.safetensors"), "-r", str(req), "-o",
                 str(folder / "proc_u.safetensors"), "--json", "--force", "--quiet", "--device", "cpu"]
        for rep in range(repeats):
            row = {"case": case_name, "scenario": scenario, "repeat": rep}
            for what, cmd in (("train", train), ("apply", apply)):
                t, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                r = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True)
                row[what + "_s"] = time.perf_counter() - t
                after = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU seconds: less at the mercy of other jobs than wall time
                row[what + "_cpu_s"] = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
                if r.returncode != 0:
                    raise RuntimeError(f"{what} failed ({r.returncode}): {r.stderr[-2000:]}")
                if what == "apply":
                    row["apply_timings"] = json.loads(r.stdout).get("timings", {})
            log(f"  process {scenario:6s} train --exclude-forget {row['train_s']:.2f}s, apply {row['apply_s']:.2f}s = "
                f"{100 * row['apply_s'] / row['train_s']:.1f}% (CPU time {100 * row['apply_cpu_s'] / row['train_cpu_s']:.1f}%)  "
                f"apply's timings {row['apply_timings']}")
            out.append(row)
    return out


def print_process(rows: list[dict]) -> None:
    print("\n| case | scenario | `train --exclude-forget` process s | `apply` process s | apply / train, mean (max) | "
          "CPU time apply / train, mean (max) | apply's own timings (mean s) | target <= 25% |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["scenario"]), []).append(r)
    for (case, scen), rs in groups.items():
        ratios = [100 * r["apply_s"] / r["train_s"] for r in rs]
        keys = list(rs[0]["apply_timings"])
        parts = ", ".join(f"{k.removesuffix('_s')} {statistics.mean(r['apply_timings'].get(k, 0.0) for r in rs):.2f}" for k in keys)
        cpu = [100 * r["apply_cpu_s"] / r["train_cpu_s"] for r in rs if "apply_cpu_s" in r] or [float("nan")]
        print(f"| {case} | {scen} | {statistics.mean(r['train_s'] for r in rs):.2f} | {statistics.mean(r['apply_s'] for r in rs):.2f} | "
              f"{statistics.mean(ratios):.1f}% ({max(ratios):.1f}%) | {statistics.mean(cpu):.1f}% ({max(cpu):.1f}%) | {parts} | "
              f"{'met' if max(ratios) <= 25 else 'NOT met'} |")


def quality(r: dict) -> tuple[str, float, float]:
    """(what, RFA value, value it is compared with) for the scenario's quality target."""
    if r["scenario"] == "class":
        return "remaining-class test acc", r["after"]["test_remaining_acc"], r["before"]["test_remaining_acc"]
    return "forget acc", r["after"]["forget_acc"], r["ref"]["forget_acc"]


def quality_str(r: dict) -> str:
    a = r["after"]
    if r["scenario"] == "class":
        return (f"Drt {100 * r['before']['test_remaining_acc']:.1f}->{100 * a['test_remaining_acc']:.1f} "
                f"(retrain {100 * r['ref'].get('test_remaining_acc', float('nan')):.1f})  Df {100 * a['forget_acc']:.1f}  "
                f"Dft {100 * a['test_forgotten_acc']:.1f}")
    floor = f", 2nd retrain {100 * r['ref2_forget_acc']:.1f}" if r.get("ref2_forget_acc") is not None else ""
    return (f"Df {100 * a['forget_acc']:.1f} (retrain {100 * r['ref']['forget_acc']:.1f}{floor}, orig {100 * r['before']['forget_acc']:.1f})  "
            f"test {100 * r['before']['test_acc']:.1f}->{100 * a['test_acc']:.1f}")


def checks(r: dict) -> dict[str, bool]:
    c = {"time<=5%": r["t_rfa"] <= 0.05 * r["t_retrain"]}
    a = r["after"]
    if r["scenario"] == "class":
        c["Drt>=orig-1pt"] = a["test_remaining_acc"] >= r["before"]["test_remaining_acc"] - 0.01 - 1e-9
        c["Df<=5%"] = a["forget_acc"] <= 0.05
        c["Dft<=2%"] = a["test_forgotten_acc"] <= 0.02
    else:
        c["Df±2pt of retrain"] = abs(a["forget_acc"] - r["ref"]["forget_acc"]) <= 0.02 + 1e-9
    return c


def print_table(rows: list[dict]) -> None:
    print("| case | scenario | variant | seed | RFA s | retrain s | RFA / retrain | steps | passes over Df | quality | targets |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        c = checks(r)
        miss = [k for k, ok in c.items() if not ok]
        print(f"| {r['case']} | {r['scenario']} | {r['variant']} | {r['seed']} | {r['t_rfa']:.3f} | {r['t_retrain']:.2f} | "
              f"{100 * r['t_rfa'] / r['t_retrain']:.1f}% | {r['info'].get('steps')} | {r['info'].get('passes', r['info'].get('epochs_run'))} | "
              f"{quality_str(r)} | {'PASS' if not miss else 'miss: ' + ', '.join(miss)} |")


def print_summary(rows: list[dict]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["scenario"], r["variant"]), []).append(r)
    print("\n| case | scenario | variant | RFA / retrain, mean (max) | quality, mean (worst) | 2nd retrain's Df gap, mean (worst) | seeds meeting every target |")
    print("|---|---|---|---:|---|---|---|")
    for (case, scen, var), rs in groups.items():
        ratios = [100 * r["t_rfa"] / r["t_retrain"] for r in rs]
        gaps = [100 * (quality(r)[1] - quality(r)[2]) for r in rs]
        worst = min(gaps) if scen == "class" else max(gaps, key=abs)
        what = "Drt change vs original" if scen == "class" else "Df gap to retrain"
        ok = sum(all(checks(r).values()) for r in rs)
        floors = [100 * (r["ref2_forget_acc"] - r["ref"]["forget_acc"]) for r in rs if r.get("ref2_forget_acc") is not None]
        floor = f"{statistics.mean(floors):+.1f} ({max(floors, key=abs):+.1f}) pt" if floors else "-"
        print(f"| {case} | {scen} | {var} | {statistics.mean(ratios):.1f}% ({max(ratios):.1f}%) | "
              f"{what} {statistics.mean(gaps):+.1f} ({worst:+.1f}) pt | {floor} | {ok}/{len(rs)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated, from: {', '.join(CASES)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--scenarios", default="class,sample")
    ap.add_argument("--param", action="append", default=[], help="RFA key=value override, applied to every variant")
    ap.add_argument("--variants", default=None, help="comma-separated VARIANTS names, or 'all'")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                    help="also run apply with its defaults from another checkout of the tool (e.g. main=/tmp/main), same originals")
    ap.add_argument("--no-floor", action="store_true", help="sample unlearning: skip the second retrained reference "
                    "(another initialisation) that shows how far two retrainings differ on the forget set")
    ap.add_argument("--process", default="user_cnn15", help="case (among --cases) whose whole `apply` process is also timed "
                    "against the whole `train --exclude-forget` process ('' to skip)")
    ap.add_argument("--process-repeats", type=int, default=3)
    ap.add_argument("--process-only", action="store_true", help="only the process timing, on requests and originals an earlier "
                    "run left in --work")
    ap.add_argument("--from-json", action="append", type=Path, default=[], help="print the tables from rows saved by earlier "
                    "runs' --json (repeatable: runs of different cases combine) instead of running")
    ap.add_argument("--work", type=Path, default=None, help="keep requests, data and checkpoints in this folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_key_values(args.param)
    names = list(VARIANTS) if args.variants == "all" else (args.variants.split(",") if args.variants else ["default"])
    variants = {n: {**VARIANTS[n], **overrides} for n in names}
    if overrides and names == ["default"]:
        variants = {"params " + " ".join(args.param): overrides}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    started = time.perf_counter()
    rows, process_rows = [], []
    if args.from_json:
        for path in args.from_json:
            saved = json.loads(path.read_text())
            rows += saved["rows"] if isinstance(saved, dict) else saved
            process_rows += saved.get("process", []) if isinstance(saved, dict) else []
        print(f"RFA-LoRA time and quality against retraining, from {', '.join(p.name for p in args.from_json)}\n")
        print_table(rows)
        print_summary(rows)
        if process_rows:
            print_process(process_rows)
        return
    if args.process_only:
        print_process(process_ratio(args.process, args.work, args.process_repeats))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            compare = {k: Path(v).resolve() for k, v in (c.split("=", 1) for c in args.compare)}
            rows += run_case(case.strip(), seeds, args.scenarios.split(","), variants, args.work or Path(tmp), compare, not args.no_floor)
            if args.json:  # after each case, so a long run's finished cases are kept
                args.json.write_text(json.dumps({"rows": rows, "process": process_rows}, indent=1, default=str))
            if case.strip() == args.process and args.first_seed == 0:
                process_rows = process_ratio(case.strip(), args.work or Path(tmp), args.process_repeats)
                if args.json:
                    args.json.write_text(json.dumps({"rows": rows, "process": process_rows}, indent=1, default=str))
    print(f"RFA-LoRA time and quality against retraining; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), seeds {seeds}; total {time.perf_counter() - started:.0f}s\n")
    print_table(rows)
    print_summary(rows)
    if process_rows:
        print_process(process_rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "process": process_rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
