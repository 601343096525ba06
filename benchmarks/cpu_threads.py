"""`unlearn apply` on a CPU shared with other work: how torch's OpenMP threads wait decides the speed.

    python benchmarks/cpu_threads.py                       # cases mlp, small_cnn, vit; 2 repeats
    python benchmarks/cpu_threads.py --cases vit --repeats 3

torch runs its CPU ops on an OpenMP (libgomp) thread pool, one thread per core. By default libgomp's idle threads
spin (busy-wait) before they sleep. Alone on the machine that costs nothing; when another process holds a core, a
spinning thread burns the very core the thread it waits for needs, and every op pays for it. The CLI now sets
`OMP_WAIT_POLICY=PASSIVE` before torch loads unless the user chose a policy (cli/__init__.py). This script measures
the real `unlearn apply --json` process (subprocesses, fresh each time) under:

  wait:      spin     GOMP_SPINCOUNT=300000, libgomp's own default when no policy is set (the tool before)
             short spin  GOMP_SPINCOUNT=10000 (a middle way: threads spin briefly, then sleep)
             passive  the tool's default now (no variable set: the CLI sets OMP_WAIT_POLICY=PASSIVE)
             1 thread OMP_NUM_THREADS=1 (and passive)
  condition: idle       nothing else started by this script
             neighbour  one single-threaded torch process multiplying matrices all the time (another job)
             two jobs   two identical `unlearn apply` processes at once (both timed; their mean)

Cases (originals trained once by `unlearn train` in the work folder; class unlearning with a fixed number of RFA
steps, `--param stop=epochs --param epochs=E`, so every variant does the same work):
  mlp        builtin:mlp on sklearn digits, forget class 3
  small_cnn  builtin:small_cnn on sklearn digits, forget class 3
  vit        a 2-layer Hugging Face ViT (hidden 32, patch 4) on digits resized to 16x16, forget class 7 (hf:<folder>)

Printed: per case, condition and wait, the median over repeats of the method's wall time (apply's wall_time_s)
and of the whole process's wall time, and the slow-down against `passive` alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WAITS = {
    "spin": {"GOMP_SPINCOUNT": "300000"},
    "short spin": {"GOMP_SPINCOUNT": "10000"},
    "passive": {},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}
CONDITIONS = ("idle", "neighbour", "two jobs")
CASES = {
    "mlp": dict(arch="builtin:mlp", kwargs={"in_features": 64, "num_classes": 10}, data={"source": "sklearn:digits"}, forget=3, epochs=40),
    "small_cnn": dict(arch="builtin:small_cnn", kwargs={"in_channels": 1, "num_classes": 10}, data={"source": "sklearn:digits"}, forget=3, epochs=20),
    "vit": dict(arch="hf:vit", kwargs={}, data={"source": "sklearn:digits", "preprocess": {"resize": 16}}, forget=7, epochs=8),
}
NEIGHBOUR = "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a = (a @ a).tanh()\n"


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(args: list, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", *map(str, args)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def prepare_case(work: Path, name: str) -> tuple[Path, Path]:
    """The case's request and its trained original (`unlearn train`), made once in `work`."""
    spec = CASES[name]
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "vit":
        from transformers import ViTConfig, ViTForImageClassification
        import torch

        if not (folder / "vit" / "config.json").exists():
            torch.manual_seed(0)
            ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64, num_labels=10)).save_pretrained(str(folder / "vit"))
    req = {"version": 1, "id": f"threads-{name}", "model": {"arch": spec["arch"], "kwargs": spec["kwargs"]},
           "data": {"train": json.loads(json.dumps(spec["data"])), "test": json.loads(json.dumps(spec["data"]))}, "forget": {"classes": [spec["forget"]]},
           "method": {"name": "rfa"}, "seed": 0}
    (folder / "req.yaml").write_text(yaml.safe_dump(req))
    original = folder / ("trained" if name == "vit" else "original.safetensors")
    if not original.exists():
        p = _cli(["train", "-r", folder / "req.yaml", "-o", original, "--epochs", spec["epochs"], "--quiet"], _env({"OMP_NUM_THREADS": "1"}), folder)
        out, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"training {name} failed: {err.strip().splitlines()[-1] if err.strip() else out}")
    return folder / "req.yaml", original


def _apply(req: Path, original: Path, out: Path, steps_epochs: int, env: dict) -> subprocess.Popen:
    return _cli(["apply", original, "-r", req, "-o", out, "--force", "--json", "--quiet", "--device", "cpu",
                 "--param", "stop=epochs", "--param", f"epochs={steps_epochs}", "--no-anchor"], env, req.parent)


def _finish(p: subprocess.Popen, started: float) -> tuple[float, float]:
    out, err = p.communicate()
    wall = time.perf_counter() - started
    if p.returncode:
        raise SystemExit(f"apply failed ({p.returncode}): {err.strip().splitlines()[-1] if err.strip() else out}")
    return float(json.loads(out)["wall_time_s"]), wall


def measure(req: Path, original: Path, condition: str, wait: str, epochs: int) -> list[tuple[float, float]]:
    """(method s, process s) of the apply process(es) of one run of `condition` with `wait`."""
    env = _env(WAITS[wait])
    neighbour = None
    if condition == "neighbour":
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    try:
        jobs = 2 if condition == "two jobs" else 1
        t0 = time.perf_counter()
        procs = [_apply(req, original, req.parent / f"out{j}.safetensors", epochs, env) for j in range(jobs)]
        return [_finish(p, t0) for p in procs]
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="mlp,small_cnn,vit")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--waits", default=",".join(WAITS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5, help="RFA passes over the forget set (stop=epochs: the same steps in every run)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (kept; trained originals are reused)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="unlearn-threads-"))
    cases, conditions, waits = args.cases.split(","), args.conditions.split(","), args.waits.split(",")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; load average at start "
          f"{os.getloadavg()[0]:.2f}; RFA class unlearning, {args.epochs} passes (stop=epochs); median of {args.repeats}", flush=True)
    rows = []
    for name in cases:
        req, original = prepare_case(work, name)
        for r in range(args.repeats):  # repeats outermost within a case: the variants interleave
            for condition in conditions:
                for wait in waits:
                    for method_s, process_s in measure(req, original, condition, wait, args.epochs):
                        rows.append(dict(case=name, condition=condition, wait=wait, repeat=r, method_s=method_s, process_s=process_s))
                    print(f"  {name} {condition} {wait} repeat {r}: method {rows[-1]['method_s']:.2f}s", file=sys.stderr, flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}\n")
    print("| case | condition | wait | method s | process s | method / passive idle |")
    print("|---|---|---|---:|---:|---:|")
    for name in cases:
        def med(cond: str, wait: str, key: str) -> float:
            return statistics.median(x[key] for x in rows if x["case"] == name and x["condition"] == cond and x["wait"] == wait)
        base = med("idle", "passive", "method_s") if "idle" in conditions and "passive" in waits else None
        for condition in conditions:
            for wait in waits:
                m = med(condition, wait, "method_s")
                ratio = f"{m / base:.1f}x" if base else "-"
                print(f"| {name} | {condition} | {wait} | {m:.2f} | {med(condition, wait, 'process_s'):.1f} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "epochs": args.epochs, "repeats": args.repeats}, indent=1))


if __name__ == "__main__":
    main()
