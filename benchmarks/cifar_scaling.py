"""What `unlearn apply` costs at CIFAR size on CPU, and whether it follows the work (the forget set), not the data set.

    python benchmarks/cifar_scaling.py                                  # ResNet-18 and a small ViT, 10k/25k/50k, all scenarios
    python benchmarks/cifar_scaling.py --models resnet18 --sizes 10000 --scenarios class
    python benchmarks/cifar_scaling.py --root ~/data                    # real CIFAR-10 (cifar-10-batches-bin under ROOT)

For each model:
1. `unlearn train --epochs 1` (subprocess) once, at the first size of --sizes unless the work folder already holds that
   model's checkpoint: one training epoch, timed (its wall_time_s); the per-sample epoch time x N is the epoch time at the
   other sizes (marked "projected"), and 30 x that the cost of a 30-epoch retrain. That 1-epoch model is the checkpoint
   every run below unlearns (timing only: RFA runs a fixed number of steps, --param epochs=1 --param stop=epochs, so
   the model's quality does not change the cost).
2. `unlearn apply CKPT --json --param epochs=1 --param stop=epochs` (subprocess) per size N and scenario: forget class 3
   (N/10 samples), a random 1% or 10% of the train set, and a fixed 500 samples (the same |Df| at every N: RFA's time
   should not grow with the retain set). Measured: the method's wall time (the JSON's wall_time_s), apply's time in
   all (the process, start to exit), where the rest went (the JSON's timings: start-up and imports, data and model,
   the before/after summary, writing), the overhead share (1 - method / all) and peak RSS (wait4).
Runs of several invocations (e.g. --sizes 50000 --scenarios fixed later) are merged with --render A.json B.json.
Without --root the data are synthetic CIFAR-shaped images written in CIFAR-10's binary format (uint8 noise with a
class-dependent colour, 32x32x3, labels 0-9), read by the same loader as the real data.
Prints one markdown table, machine and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECORD = 3073  # CIFAR-10 binary: 1 label byte + 3 x 32 x 32 pixel bytes
TEST_SIZE = 10_000
MODELS = {
    "resnet18": ("torchvision:resnet18", {"num_classes": 10}),
    "vit": ("hf:vit-small", {}),  # config written below
}
# a small ViT for 32x32 inputs: ViT-Tiny's width (192, 3 heads, MLP 768), 6 layers, 8x8 patches (16 tokens + CLS)
VIT = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
           intermediate_size=768, num_labels=10)
NORMALIZE = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
FIXED_FORGET = 500

REQUEST = """
version: 1
id: cifar-scaling-{name}
model: {{arch: "{arch}", kwargs: {kwargs}}}
data:
  train: {{source: "torchvision:CIFAR10", root: {root}, preprocess: {{normalize: {norm}}}}}
  test: {{source: "torchvision:CIFAR10", root: {root}, preprocess: {{normalize: {norm}}}}}
  batch_size: 256
forget: {forget}
seed: 0
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_cifar(folder: Path, train: np.ndarray, test: np.ndarray) -> None:
    """CIFAR-10's binary layout: data_batch_1..5.bin (the train records split in five) and test_batch.bin."""
    out = folder / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(train, 5), 1):
        part.tofile(out / f"data_batch_{i}.bin")
    test.tofile(out / "test_batch.bin")


def synthetic_records(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    tint = rng.integers(0, 256, (10, 3, 1), dtype=np.int16)
    pixels = ((rng.integers(0, 256, (n, 3, 1024), dtype=np.int16) + tint[labels]) // 2).astype(np.uint8)
    return np.concatenate([labels[:, None], pixels.reshape(n, 3072)], axis=1)


def real_records(root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-bin"
    train = np.concatenate([np.fromfile(folder / f"data_batch_{i}.bin", dtype=np.uint8).reshape(-1, RECORD) for i in range(1, 6)])
    return train, np.fromfile(folder / "test_batch.bin", dtype=np.uint8).reshape(-1, RECORD)


def run(cmd: list[str], threads: int) -> tuple[dict, float, float, float]:
    """Run a CLI command; its JSON summary, its wall time (s), its peak RSS (GiB) and its CPU time (s, user + system), from wait4."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "cli", *cmd], cwd=ROOT, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen.wait would reap it without)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read().decode()[-2000:]}")
        return json.loads(out.read()), wall, usage.ru_maxrss / 2**20, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,vit")
    ap.add_argument("--sizes", default="10000,25000,50000")
    ap.add_argument("--scenarios", default="class,1%,10%,fixed")
    ap.add_argument("--root", type=Path, default=None, help="real CIFAR-10: a folder holding cifar-10-batches-bin")
    ap.add_argument("--work", type=Path, default=Path("bench_cifar"), help="data, requests, checkpoints (reused)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process (OMP_NUM_THREADS)")
    ap.add_argument("--json-out", type=Path, default=None, help="also write every measured row as JSON here")
    ap.add_argument("--render", type=Path, nargs="+", default=None, help="print the table of earlier --json-out files, run nothing")
    args = ap.parse_args()
    if args.render:
        render([r for f in args.render for r in json.loads(f.read_text())])
        return
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.root is not None:
        all_train, test = real_records(args.root.expanduser())
        source = f"real CIFAR-10 from {args.root}"
    else:
        all_train, test = synthetic_records(max(sizes), 0), synthetic_records(TEST_SIZE, 1)
        source = "synthetic CIFAR-shaped data (CIFAR-10 binary format)"
    if "vit" in args.models and not (work / "vit-small" / "config.json").exists():
        from transformers import ViTConfig

        ViTConfig(**VIT).save_pretrained(str(work / "vit-small"))
    rows = []
    started = time.perf_counter()
    for n in sizes:
        data = work / f"cifar{n}"
        if not (data / "cifar-10-batches-bin" / "test_batch.bin").exists():
            write_cifar(data, all_train[:n], test)
        rng = np.random.default_rng(0)
        forgets = {"class": "{classes: [3]}",
                   "1%": "{indices_file: forget1.txt}", "10%": "{indices_file: forget10.txt}", "fixed": "{indices_file: forget500.txt}"}
        for name, k in (("forget1.txt", n // 100), ("forget10.txt", n // 10), ("forget500.txt", FIXED_FORGET)):
            (data / name).write_text("\n".join(map(str, sorted(rng.choice(n, k, replace=False).tolist()))) + "\n")
        for model in args.models.split(","):
            arch, kwargs = MODELS[model]
            if arch.startswith("hf:"):
                arch = f"hf:{work / 'vit-small'}"
            reqs = {}
            for scenario in args.scenarios.split(","):
                reqs[scenario] = data / f"{model}-{scenario.rstrip('%')}.yaml"
                reqs[scenario].write_text(REQUEST.format(name=f"{model}-{n}-{scenario}", arch=arch, kwargs=json.dumps(kwargs), root=".",
                                                         norm=json.dumps(NORMALIZE), forget=forgets[scenario]))
            ckpt, trained_json = work / f"{model}.safetensors", work / f"{model}.train.json"
            if not trained_json.exists():
                trained, train_wall, train_rss, _ = run(["train", "-r", str(next(iter(reqs.values()))), "-o", str(ckpt), "--epochs", "1",
                                                      "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "128", "--force", "--json",
                                                      "--quiet"], args.threads)
                trained_json.write_text(json.dumps({"n": n, "epoch_s": trained["wall_time_s"], "rss": train_rss}))
                log(f"{model} N={n}: one epoch {trained['wall_time_s']:.1f}s (process {train_wall:.1f}s, peak RSS {train_rss:.2f} GiB)")
            trained = json.loads(trained_json.read_text())
            epoch, measured = trained["epoch_s"] * n / trained["n"], trained["n"] == n
            for scenario, req in reqs.items():
                out = data / f"{model}-{scenario.rstrip('%')}.unlearned.safetensors"
                summary, wall, rss, cpu = run(["apply", str(ckpt), "-r", str(req), "-o", str(out), "--force", "--json", "--quiet",
                                          "--param", "epochs=1", "--param", "stop=epochs"], args.threads)
                method = summary["wall_time_s"]
                t = summary["timings"]
                row = {"model": model, "n": n, "scenario": scenario, "forget": summary["forget_size"], "retain": summary["retain_size"],
                       "steps": summary["info"].get("steps"), "method_s": method, "apply_s": wall, "overhead_share": 1 - method / wall,
                       "startup_s": wall - t["process_s"] + t["startup_s"] + t.get("imports_s", 0.0), "prepare_s": t["prepare_s"],
                       "summary_s": t["summary_s"], "write_s": t.get("write_s", 0.0), "peak_rss_gib": rss, "epoch_s": epoch,
                       "epoch_measured": measured, "retrain30_s": 30 * epoch, "summary_samples": summary["summary_samples"],
                       "threads": args.threads, "load": os.getloadavg()[0], "source": source,
                       "method_cpu_s": t.get("method_cpu_s"), "apply_cpu_s": cpu}
                rows.append(row)
                log(f"  {scenario}: |Df| {row['forget']}, {row['steps']} steps, method {method:.1f}s, apply {wall:.1f}s "
                    f"(overhead {100 * row['overhead_share']:.0f}%), peak RSS {rss:.2f} GiB")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    log(f"total {time.perf_counter() - started:.0f}s")
    render(rows)


def cpu_cells(r: dict) -> list[str]:
    """Method and apply CPU time and the overhead share of CPU: the work, whatever else loads the machine ('-' where a run
    did not record it: apply's CPU time came with the harness, the method's with apply's JSON timings)."""
    method, whole = r.get("method_cpu_s"), r.get("apply_cpu_s")
    return [f"{method:.1f}" if method is not None else "-", f"{whole:.1f}" if whole is not None else "-",
            f"{100 * (1 - method / whole):.0f}" if method is not None and whole else "-"]


def render(rows: list[dict]) -> None:
    import torch

    sources = sorted({r["source"] for r in rows})
    print(f"`unlearn apply` at CIFAR size on CPU: {'; '.join(sources)}; test set {TEST_SIZE}; RFA with --param epochs=1 --param "
          f"stop=epochs (one pass over the forget set, batches of 64 forget + 64 retain samples); summary on the whole forget set "
          f"and seeded samples of 1000 retain and 1000 test samples; {platform.machine()}, {os.cpu_count()} cores (shared), "
          f"torch {torch.__version__}, OMP_NUM_THREADS={sorted({r['threads'] for r in rows})}, load average during the runs "
          f"{min(r['load'] for r in rows):.1f}-{max(r['load'] for r in rows):.1f}.\n")
    cpu = any(r.get("apply_cpu_s") is not None for r in rows)  # runs before CPU time was recorded: no CPU columns
    head = ["model", "N train", "scenario", "\\|Df\\|", "RFA steps", "method s", "apply s (in all)", "start-up + imports s", "data + model s",
            "summary s", "write s", "overhead %"] + (["method CPU s", "apply CPU s", "overhead % of CPU"] if cpu else []) + [
            "peak RSS GiB", "epoch s", "30-epoch retrain s", "method / retrain %"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if h in ("model", "scenario") else "---:" for h in head) + "|")
    for r in sorted(rows, key=lambda r: (r["model"], r["n"], ["class", "10%", "1%", "fixed"].index(r["scenario"]))):
        mark = "" if r["epoch_measured"] else " (projected)"
        cells = [r["model"], f"{r['n']:,}", r["scenario"], f"{r['forget']:,}", str(r["steps"]), f"{r['method_s']:.1f}", f"{r['apply_s']:.1f}",
                 f"{r['startup_s']:.1f}", f"{r['prepare_s']:.1f}", f"{r['summary_s']:.1f}", f"{r['write_s']:.1f}",
                 f"{100 * r['overhead_share']:.0f}"] + (cpu_cells(r) if cpu else []) + [
                 f"{r['peak_rss_gib']:.2f}", f"{r['epoch_s']:.0f}{mark}", f"{r['retrain30_s']:.0f}", f"{100 * r['method_s'] / r['retrain30_s']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    fixed = [r for r in rows if r["scenario"] == "fixed"]
    for model in sorted({r["model"] for r in fixed}):
        curve = sorted((r["retain"], r["method_s"]) for r in fixed if r["model"] == model)
        print(f"\nRFA time at |Df| = {FIXED_FORGET} against the retain-set size, {model}: " + ", ".join(f"{n:,}: {t:.1f}s" for n, t in curve))
        cpu = sorted((r["retain"], r["method_cpu_s"]) for r in fixed if r["model"] == model and r.get("method_cpu_s") is not None)
        if cpu:
            print(f"RFA CPU time at |Df| = {FIXED_FORGET} against the retain-set size, {model}: " + ", ".join(f"{n:,}: {t:.1f}s" for n, t in cpu))

if __name__ == "__main__":
    main()
