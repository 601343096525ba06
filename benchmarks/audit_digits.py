"""The audit's verdict and its strong tier on scikit-learn digits: what they say about RFA, an unchanged model and retraining.

    python benchmarks/audit_digits.py                 # class 3 and 10% samples, builtin MLP, 16 shadows
    python benchmarks/audit_digits.py --shadows 8 --scenarios sample

For each scenario: the original is trained (`unlearn train` defaults), the reference retrained without the
forget set, RFA applied with its defaults; then the same `unlearn audit --tier strong` code audits three
"unlearned" models against that reference: the RFA output, the original itself (nothing forgotten) and the
reference (forgotten by construction). A fourth case is a model built to leak: a wide MLP trained 150
epochs on 300 digits, audited unchanged. Prints the verdict, the population statistics, U-LiRA
(AUC, TPR at 1% and 0.1% FPR) for the audited model and the reference, relearn steps, AIN and the cost.
Shadow models are cached ($UNLEARN_CACHE_DIR): run twice to see the cached cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typer.testing import CliRunner  # noqa: E402

from cli.main import app  # noqa: E402


def run(*args) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def request(folder: Path, name: str, forget: dict, extra: dict | None = None) -> Path:
    req = {"version": 1, "id": name, "model": {"arch": "builtin:mlp", "kwargs": {"num_classes": 10}},
           "data": {"train": {"source": "sklearn:digits"}, "test": {"source": "sklearn:digits"}},
           "forget": forget, "method": {"name": "rfa", "params": {}}, "seed": 0, **(extra or {})}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(req, sort_keys=False))
    return folder / f"{name}.yaml"


def leaky_request(folder: Path) -> Path:
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x = torch.from_numpy((d.images[order] / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target[order].astype(np.int64))
    save_file({"x": x[:300].contiguous(), "y": y[:300].contiguous()}, str(folder / "train.safetensors"))
    save_file({"x": x[300:900].contiguous(), "y": y[300:900].contiguous()}, str(folder / "test.safetensors"))
    return request(folder, "leaky", {"indices": list(range(0, 300, 5))},
                   {"model": {"arch": "builtin:mlp", "kwargs": {"num_classes": 10, "hidden": [256, 256]}},
                    "data": {"train": {"source": "tensors", "path": "train.safetensors"},
                             "test": {"source": "tensors", "path": "test.safetensors"}}})


def audit(req: Path, original: Path, unlearned: Path, reference: Path, folder: Path, shadows: int) -> dict:
    start = time.perf_counter()
    code, out, err = run("audit", "-r", req, "--original", original, "--unlearned", unlearned, "--reference", reference,
                         "--tier", "strong", "--shadows", shadows, "--report-dir", folder, "--json", "--quiet")
    report = json.loads(out)
    report["_exit"], report["_seconds"] = code, time.perf_counter() - start
    return report


def row(case: str, r: dict) -> str:
    d, s = r["verdict_detail"], r["strong"]
    st = d["statistics"]["unlearned"]
    u, ref = s["models"]["unlearned"], s["models"]["reference"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    return (f"| {case} | {r['verdict']} (exit {r['_exit']}) | {st['ks_loss']['pvalue']:.3f} | {st['loss_auc']['auc']:.3f} | "
            f"{r['models']['unlearned']['forget_acc'] * 100:.1f} | {u['auc']:.3f} / {ref['auc']:.3f} | "
            f"{pct(u.get('tpr_at_1pct_fpr'))} / {pct(ref.get('tpr_at_1pct_fpr'))} | {pct(u.get('tpr_at_0.1pct_fpr'))} / {pct(ref.get('tpr_at_0.1pct_fpr'))} | "
            f"{u['relearn_steps']} / {ref['relearn_steps']} | {'-' if s['ain'] is None else format(s['ain'], '.2f')} | "
            f"{s['shadow_time_s']:.0f} ({s['cache_hits']} cached) | {r['_seconds']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shadows", type=int, default=16)
    ap.add_argument("--scenarios", default="class,sample,leaky")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="unlearn-audit-bench-"))
    rows, sentences = [], []
    for scenario in args.scenarios.split(","):
        if scenario == "leaky":
            req = leaky_request(folder)
            run("train", "-r", req, "-o", folder / "leaky.safetensors", "--epochs", "150", "--quiet")
            run("train", "-r", req, "-o", folder / "leaky_ref.safetensors", "--epochs", "150", "--exclude-forget", "--quiet")
            cases = {"leaky MLP, unchanged": folder / "leaky.safetensors", "leaky MLP, retrained": folder / "leaky_ref.safetensors"}
            orig, ref = folder / "leaky.safetensors", folder / "leaky_ref.safetensors"
        else:
            forget = {"classes": [3]} if scenario == "class" else {"indices": sorted(int(i) for i in np.random.default_rng(0).choice(1437, 144, replace=False))}
            req = request(folder, scenario, forget)
            orig, ref, rfa = folder / f"{scenario}_orig.safetensors", folder / f"{scenario}_ref.safetensors", folder / f"{scenario}_rfa.safetensors"
            run("train", "-r", req, "-o", orig, "--quiet")
            run("train", "-r", req, "-o", ref, "--exclude-forget", "--quiet")
            run("apply", orig, "-r", req, "-o", rfa, "--quiet")
            cases = {f"{scenario}: RFA": rfa, f"{scenario}: original, unchanged": orig, f"{scenario}: retrained": ref}
        for case, model in cases.items():
            r = audit(req, orig, model, ref, folder / f"audit-{len(rows)}", args.shadows)
            rows.append(row(case, r))
            sentences.append(f"- {case}: {r['verdict_detail']['sentence']}")
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"Audit verdicts and the strong tier on scikit-learn digits (builtin MLP; leaky: 256-256 MLP, 150 epochs on 300 "
          f"digits), {args.shadows} shadows, torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| case | verdict | KS loss p | loss AUC | forget acc % | U-LiRA AUC (model / retrained) | TPR@1%FPR % | TPR@0.1%FPR % "
          "| relearn steps | AIN | shadows s | audit s |")
    print("|---|---|---:|---:|---:|---|---|---|---|---:|---|---:|")
    print("\n".join(rows))
    print("\nVerdict sentences:\n" + "\n".join(sentences))


if __name__ == "__main__":
    main()
