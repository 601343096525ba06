"""--precision: checked up front, fp32 wherever there is no CUDA, bf16 autocast on a CUDA card that supports it (issue 9)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke
from helpers import rejected


def test_an_unknown_precision_is_refused_before_any_work(digits_dir, tmp_path):
    out = tmp_path / "o.safetensors"
    rejected(invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--precision", "fp16"),
             "--precision fp16", "auto, bf16, fp32")
    assert not out.exists()


def test_on_cpu_every_choice_runs_fp32_and_gives_the_same_weights(digits_dir, tmp_path):
    """CPU never autocasts: asking for bf16 there must not change a single weight, and the JSON says fp32."""
    runs = {}
    for choice in ("fp32", "bf16"):
        out = tmp_path / f"{choice}.safetensors"
        r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--device", "cpu",
                   "--precision", choice, "--json", "--quiet")
        assert r.exit_code == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["precision"] == "fp32" and "peak_gpu_memory_mb" not in summary
        runs[choice] = load_file(str(out))
    assert all(torch.equal(runs["fp32"][k], runs["bf16"][k]) for k in runs["fp32"])


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs a CUDA card with bfloat16")
def test_on_cuda_training_passes_run_in_bf16_and_still_train():
    from unlearn_tool.precision import configure, training_autocast

    device = torch.device("cuda")
    configure("auto", device)
    layer = torch.nn.Linear(8, 2).to(device)
    with training_autocast(device):
        assert layer(torch.randn(4, 8, device=device)).dtype == torch.bfloat16
    configure("fp32", device)
    with training_autocast(device):
        assert layer(torch.randn(4, 8, device=device)).dtype == torch.float32
    configure("auto", None)
