"""Does SSD's outcome depend on the seed? Its forget importance read once against averaged over more batches.

    python benchmarks/ssd_seeds.py                 # digits MLP, class 3 and the example's 10% samples, seeds 0-3

SSD's importance is a mean of squared batch-mean gradients. Class 3 of the digits MLP is 146 samples, 3 batches at
the class default 64; which samples share a batch is all a seed changes in SSD, and it decided whether the class was
forgotten. The rows: the published procedure (Df read once in batches of 64, the last one 18; the tool before
`forget_batches` and even batches), `forget_batches 1` (Df read once in batches of even size, 49/49/48) and the
default (even batches, Df reshuffled until 48 batches were read). The model: the shipped example's MLP (`unlearn train -r
digits_class.yaml`, seed 0), trained here in a temporary folder. Prints a markdown table with machine and settings.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.main import app  # noqa: E402
from unlearn_tool.evaluate import predict_logits  # noqa: E402
from unlearn_tool.job import prepare  # noqa: E402
from unlearn_tool.methods import parse_params, run_method  # noqa: E402
from unlearn_tool.methods import ssd  # noqa: E402
from unlearn_tool.pipeline import utility  # noqa: E402
from unlearn_tool.quickstart import copy_examples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 (default 4)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from typer.testing import CliRunner

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        copy_examples(folder)
        class_req = folder / "digits_class.yaml"
        sample = yaml.safe_load(class_req.read_text())
        sample["forget"] = {"indices_file": "digits_forget.txt"}
        sample["audit"] = {}
        sample_req = folder / "digits_samples_mlp.yaml"
        sample_req.write_text(yaml.safe_dump(sample))
        model = folder / "digits_mlp.safetensors"
        r = CliRunner().invoke(app, ["train", "-r", str(class_req), "-o", str(model), "--device", "cpu", "--quiet"])
        assert r.exit_code == 0, r.output
        print(f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, one thread; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print("\n| scenario | forget_batches | seed | forget acc | forget conf | retain acc | test acc (kept classes) | weights dampened % | wall s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, req in (("class 3 (146 samples)", class_req), ("10% samples (144)", sample_req)):
            job0 = prepare(req, model, device="cpu")
            even = ssd.even_batch_size
            for label, batches in (("published (64/64/18)", 1), ("1", 1), ("48 (default)", 48)):
                ssd.even_batch_size = (lambda n, size: size) if label.startswith("published") else even
                for seed in range(args.seeds):
                    job = job0.for_seed(seed)
                    start = time.perf_counter()
                    out, _ = run_method("ssd", job.context(), parse_params("ssd", {"use_cache": False, "forget_batches": batches}))
                    wall = time.perf_counter() - start
                    u = utility(out.model, job)
                    logits, y = predict_logits(out.model, job.splits.forget, job.device)
                    conf = float(logits.softmax(1).gather(1, y[:, None]).mean())  # mean true-class confidence
                    test = u.get("test_remaining_acc") if u.get("test_remaining_acc") is not None else u["test_acc"]
                    print(f"| {name} | {label} | {seed} | {u['forget_acc']:.3f} | {conf:.3f} | {u['retain_acc']:.3f} | {test:.3f} | "
                          f"{100 * out.info['dampened_fraction']:.2f} | {wall:.2f} |", flush=True)
            ssd.even_batch_size = even


if __name__ == "__main__":
    main()
