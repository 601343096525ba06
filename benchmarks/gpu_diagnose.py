"""Why does training on a CUDA card not learn? One in-process run that separates the suspects (device check).

    python benchmarks/gpu_diagnose.py

1. Host-to-device copies: pageable vs pinned (`pin_memory()` then `.to("cuda")`), compared with the source.
2. A plain torch loop (no unlearn_tool) training an MLP on digits on the card, with pageable and pinned batches.
3. `unlearn train` (in-process) on digits: cpu, and cuda x {fp32, bf16} x {pinned batches, not}; the accuracy the
   train summary reports and the accuracy of the written checkpoint evaluated on CPU.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def copies() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in ((64, 64), (256, 64), (4096, 3, 32, 32)):
        bad_plain = bad_pinned = bad_pinned_nb = 0
        for _ in range(20):
            x = torch.randn(*shape, generator=gen)
            bad_plain += not torch.equal(x.to("cuda").cpu(), x)
            bad_pinned += not torch.equal(x.pin_memory().to("cuda").cpu(), x)
            p = x.pin_memory()
            d = p.to("cuda", non_blocking=True)
            torch.cuda.synchronize()
            bad_pinned_nb += not torch.equal(d.cpu(), x)
        y = torch.randint(0, 10, (256,), generator=gen)
        bad_y = sum(not torch.equal(y.pin_memory().to("cuda").cpu(), y) for _ in range(20))
        print(f"copies {shape}: wrong pageable {bad_plain}/20, pinned {bad_pinned}/20, pinned non_blocking {bad_pinned_nb}/20, "
              f"pinned int64 labels {bad_y}/20", flush=True)


def plain_loop() -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    for pin, bf16 in ((False, False), (True, False), (False, True)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(20):
            for idx in torch.randperm(len(y)).split(64):
                xb, yb = x[idx], y[idx]
                if pin:
                    xb, yb = xb.pin_memory(), yb.pin_memory()
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    loss = torch.nn.functional.cross_entropy(model(xb.to("cuda")), yb.to("cuda"))
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            acc = (model(x.cuda()).argmax(1).cpu() == y).float().mean().item()
        print(f"plain torch loop on cuda, pinned={pin}, bf16 autocast={bf16}: train accuracy {acc:.3f}", flush=True)


def tool_runs() -> None:
    from typer.testing import CliRunner

    import unlearn_tool.precision as precision
    from cli.main import app
    from unlearn_tool.evaluate import accuracy
    from unlearn_tool.job import prepare

    work = Path(tempfile.mkdtemp(prefix="gpu_diag_"))
    req = {"version": 1, "id": "diag", "model": {"arch": "builtin:mlp", "kwargs": {"num_classes": 10}},
           "data": {"train": {"source": "sklearn:digits"}, "test": {"source": "sklearn:digits"}},
           "forget": {"classes": [3]}, "method": {"name": "rfa", "params": {}}, "seed": 0}
    (work / "r.yaml").write_text(yaml.safe_dump(req, sort_keys=False))
    original_pin = precision.pin_batches
    for device, prec, pin in (("cpu", "fp32", False), ("cuda", "fp32", True), ("cuda", "fp32", False),
                              ("cuda", "bf16", True), ("cuda", "bf16", False)):
        precision.pin_batches = original_pin if pin else (lambda: False)
        out = work / f"{device}_{prec}_{pin}.safetensors"
        start = time.perf_counter()
        r = CliRunner().invoke(app, ["train", "-r", str(work / "r.yaml"), "-o", str(out), "--device", device,
                                     "--precision", prec, "--json", "--quiet"])
        wall = time.perf_counter() - start
        if r.exit_code != 0:
            print(f"unlearn train {device} {prec} pin={pin}: exit {r.exit_code}: {r.output[-400:]}", flush=True)
            continue
        s = json.loads(r.stdout)
        job = prepare(work / "r.yaml", out, device="cpu")
        cpu_acc = accuracy(job.original, job.splits.test, torch.device("cpu"))
        print(f"unlearn train {device} {prec} pinned={pin}: summary test_acc {s.get('test_acc'):.3f}, retain_acc "
              f"{s.get('retain_acc'):.3f}; checkpoint on CPU test acc {cpu_acc:.3f}; {wall:.1f} s", flush=True)
    precision.pin_batches = original_pin


if __name__ == "__main__":
    print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA", flush=True)
    for step in (copies, plain_loop, tool_runs):
        try:
            step()
        except Exception as e:  # keep going: each step answers a different question
            print(f"{step.__name__} failed: {type(e).__name__}: {e}", flush=True)
