"""Every registered unlearning method on scikit-learn digits, against retraining (issue: `unlearn bench`).

    python benchmarks/all_methods_digits.py                         # all methods, 3 seeds, both scenarios
    python benchmarks/all_methods_digits.py --methods rfa,ssd --seeds 1 --scenarios class
    python benchmarks/all_methods_digits.py --out bench_digits      # also bench.json/.csv/.md/.png per scenario
    python benchmarks/all_methods_digits.py --methods iau,rfa --regularizer gradient-restriction   # originals trained with GR

Scenarios: class unlearning (forget digit 3) and 10% random-sample unlearning (144 of the 1437 train
indices, fixed rng), builtin MLP. Per seed s: the original is trained on the train split and the
reference retrained on the retain split (unlearn_tool.training.fit, TrainConfig defaults: 40 epochs
of Adam 1e-3; the reference's init seed is s + 100), and every method runs on that seed's original
with its default parameters (ssd with use_cache=false so its times are cold). Figures come from the
same code as `unlearn bench` (unlearn_tool/bench/run.py: run_methods): audit metrics, Avg Gap to the seed's retrained
model (points), method wall time and its fraction of that seed's retraining time.
`--regularizer gradient-restriction` trains the originals *and* the references with that training
regularizer (the same procedure with and without Df; IAU assumes it), so time fractions are then
against the regularized retraining. Methods that reject a scenario (concept-poison on samples) are
left out of that scenario's table.
Prints one markdown table per scenario, then the method with the lowest Avg Gap per scenario.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearn_tool import bench as B  # noqa: E402
from unlearn_tool.job import prepare, seed_everything  # noqa: E402
from unlearn_tool.methods import get_method  # noqa: E402
from unlearn_tool.regularizers import regularizer_fields  # noqa: E402
from unlearn_tool.request import parse_key_values, parse_request  # noqa: E402
from unlearn_tool.training import TrainConfig, fit  # noqa: E402

REQUEST = """
version: 1
id: digits-{scenario}
model: {{arch: "builtin:mlp", kwargs: {{num_classes: 10}}}}
data: {{train: {{source: "sklearn:digits"}}, test: {{source: "sklearn:digits"}}}}
forget: {forget}
seed: {seed}
"""

SAMPLE_INDICES = sorted(int(i) for i in np.random.default_rng(0).choice(1437, 144, replace=False))
DEFAULT_OVERRIDES = {"ssd": {"use_cache": False}}


def make_job(scenario: str, seed: int):
    forget = "{classes: [3]}" if scenario == "class" else "{indices: " + str(SAMPLE_INDICES) + "}"
    return prepare(parse_request(REQUEST.format(scenario=scenario, forget=forget, seed=seed)), None, device="cpu")


def train(job, data, seed: int, config: TrainConfig):
    """A fresh model (init seed `seed`) trained with `config` (TrainConfig defaults unless --regularizer); returns (model, seconds)."""
    seed_everything(seed)
    model = job.for_seed(seed).make_model()
    start = time.perf_counter()
    fit(model, data, config, job.device, torch.Generator().manual_seed(seed))
    return model.eval(), time.perf_counter() - start


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def seed_setup(scenario: str, s: int, config: TrainConfig) -> tuple[B.SeedSetup, float, float | None]:
    """Seed s: the original trained on the train split, the reference retrained on the retain split (init seed s + 100).

    Returns the setup, the original's training time and (with a regularizer) the same training without it.
    """
    job = make_job(scenario, s)
    original, t_orig = train(job, job.splits.train, s, config)
    retrained, t_retrain = train(job, job.splits.retain, s + 100, config)
    plain = None
    if config.regularizer is not None:  # the regularizer's training overhead: the same original trained plainly, same run
        plain = train(job, job.splits.train, s, TrainConfig(**{**config.model_dump(), "regularizer": None, "regularizer_alpha": None}))[1]
    job.original = original
    job.original_metadata = {"unlearn.train_config": json.dumps(config.model_dump())}  # what `unlearn train` writes
    ref = B.baseline_run(retrained, job, t_retrain)
    ref["metrics"]["time_fraction"] = 1.0
    orig = B.with_gap(B.baseline_run(original, job), ref)
    log(f"# {scenario} seed {s}: original trained in {t_orig:.1f}s, retrained in {t_retrain:.1f}s "
        f"(forget acc {ref['metrics']['forget_acc']:.3f}, test acc {ref['metrics']['test_acc']:.3f})")
    return B.SeedSetup(job, orig, ref, t_retrain), t_orig, plain


def on_run(name: str, seed: int, r: dict) -> None:
    mm = r["metrics"]
    log(f"  {name:16s} seed {seed} " + (f"FAILED {r['error']}" if r["error"] else
                                        f"forget acc {mm['forget_acc']:.3f}  test acc {mm['test_acc']:.3f}  avg gap {mm['avg_gap']:.2f}  {mm['wall_time_s']:.2f}s"))


def run_scenario(scenario: str, methods: list[str], seeds: list[int], overrides: dict, config: TrainConfig) -> dict:
    methods = [m for m in methods if scenario in get_method(m).scenarios]  # concept-poison is class-only
    params = {m: B.method_params(m, {**DEFAULT_OVERRIDES.get(m, {}), **overrides.get(m, {})}) for m in methods}
    runs = [seed_setup(scenario, s, config) for s in seeds]
    setups = [r[0] for r in runs]
    entries = B.run_methods(setups, methods, params, on_run=on_run)  # the same loop as `unlearn bench`
    bench = B.assemble(setups[0].job, seeds, "retrain", entries, B.summarize("original", [s.original for s in setups], kind="original"),
                       B.summarize("retrain", [s.baseline for s in setups], config.model_dump(), kind="reference"),
                       {"kind": f"retrained per seed with unlearn_tool.training.fit, {config.model_dump()}, init seed s + 100"})
    stats = (lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0})  # noqa: E731
    bench["original_train_time_s"] = stats([r[1] for r in runs])
    plain = [r[2] for r in runs if r[2] is not None]
    if plain:
        bench["plain_train_time_s"] = stats(plain)
        bench["regularizer_overhead"] = stats([r[1] / r[2] for r in runs])
    return bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="all", help="Comma-separated method names, or 'all' (default).")
    ap.add_argument("--seeds", type=int, default=3, help="Seeds 0..N-1 (default 3).")
    ap.add_argument("--scenarios", default="class,sample", help="class, sample or both (default).")
    ap.add_argument("--param", action="append", default=[], help="METHOD.key=value override (repeatable).")
    ap.add_argument("--out", type=Path, default=None, help="Also write bench.json/.csv/.md/.png into OUT/<scenario>/.")
    ap.add_argument("--regularizer", default=None, help="Train originals and references with this training regularizer "
                    "(gradient-restriction), as `unlearn train --regularizer` does.")
    ap.add_argument("--regularizer-param", action="append", default=[], help="key=value for the regularizer, e.g. alpha=0.005.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every run, retraining included (default 1: "
                    "on a 2-core machine these tiny models train fastest on one thread)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = B.select_methods(args.methods)
    config = TrainConfig(**regularizer_fields(args.regularizer, parse_key_values(args.regularizer_param)))
    overrides = B.split_overrides(parse_key_values(args.param), methods)
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    results = {}
    for scenario in args.scenarios.split(","):
        results[scenario] = run_scenario(scenario.strip(), methods, seeds, overrides, config)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            B.write_bench(results[scenario], args.out / scenario)
    print(f"All methods on scikit-learn digits (1437 train / 360 test), builtin MLP, seeds {seeds}, mean±std; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; total {time.perf_counter() - started:.0f}s; "
          f"originals and references trained with {config.model_dump()}\n")
    for scenario, bench in results.items():
        what = "forget class 3" if scenario == "class" else "forget 144 random train samples (10%)"
        print(f"## {scenario} unlearning: {what}\n")
        print(B.markdown_table(bench))
        rt = bench["retrain_time_s"]
        ot = bench["original_train_time_s"]
        print(f"Retraining time {rt['mean']:.2f}±{rt['std'] or 0:.2f}s, original training time {ot['mean']:.2f}±{ot['std']:.2f}s; "
              "accuracies, MIA-Efficacy and time fractions in %, Avg Gap in points.")
        if "plain_train_time_s" in bench:
            pt, ov = bench["plain_train_time_s"], bench["regularizer_overhead"]
            print(f"The same originals trained without the regularizer: {pt['mean']:.2f}±{pt['std']:.2f}s; "
                  f"training-time ratio regularized / plain {ov['mean']:.2f}±{ov['std']:.2f}.")
        print()
    for scenario, bench in results.items():
        best = B.best_method(bench)
        gap = bench["methods"][best]["metrics"]["avg_gap"] if best else None
        floor = bench["methods"].get("retrain", {}).get("metrics", {}).get("avg_gap", {}).get("mean")
        note = f"; the retrain method itself: {floor:.2f}, the seed-to-seed floor" if floor is not None else ""
        print(f"lowest Avg Gap to retrain, {scenario}: {best} ({gap['mean']:.2f} points{note})" if best else f"{scenario}: no method succeeded")
        front = B.pareto_front(bench)  # no method both faster (mean wall time) and closer to retraining (mean Avg Gap)
        print(f"Pareto front (time vs Avg Gap), {scenario}: {', '.join(front)}; rfa {'on' if 'rfa' in front else 'NOT on'} the front")


if __name__ == "__main__":
    main()
