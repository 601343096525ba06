"""Every registered method, taken from the registry, through the same invariants (a new method is covered without editing this file).

- the original (the teacher) is never modified;
- the output has the original's keys, shapes and dtypes, and is in eval mode;
- the same seed gives bit-identical weights on the CPU;
- a LoRA method changes only its adapters, and its adapter and merged models predict the same;
- the wall time is reported.
Outcome floors per method (does it actually forget?) are in test_baselines_*.py and test_rfa.py.
"""

from __future__ import annotations

import pytest
import torch

from unlearn_tool.methods import get_method, method_names, parse_params, run_method

# Optional: fewer epochs for the slow methods, to keep this table fast. A method not named here runs with its defaults.
FAST = {
    "retrain": {"epochs": 3},
    "rfa": {"epochs": 3},
    "finetune": {"epochs": 2},
    "l1-sparse": {"epochs": 2},
    "random-label": {"epochs": 2},
    "salun": {"epochs": 2},
    "scrub": {"epochs": 2},
    "neggrad+": {"epochs": 2},
    "blindspot": {"epochs": 1, "blindspot_epochs": 1},
    "ssd": {"use_cache": False},
}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def jobs(digits_job, digits_sample_job, request):
    return {"class": digits_job, "sample": digits_sample_job, "regression": request.getfixturevalue("diabetes_sample_job")}


@pytest.mark.parametrize("name", method_names())
def test_method_invariants(name, jobs):
    entry = get_method(name)
    scenario = "class" if "class" in entry.scenarios else entry.scenarios[0]
    job = jobs[scenario] if "classification" in entry.tasks else jobs["regression"]  # regression-only methods: diabetes
    params = parse_params(name, {k: v for k, v in FAST.get(name, {}).items() if k in entry.params_cls.model_fields})
    original_state = _state(job.original)

    out, wall = run_method(name, job.context(), params)
    assert _equal(original_state, _state(job.original)), f"{name} modified the original"
    assert wall > 0
    state = out.model.state_dict()
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == {k: (tuple(v.shape), v.dtype) for k, v in original_state.items()}
    assert not any(m.training for m in out.model.modules()), f"{name} returned a model in training mode"
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())

    again, _ = run_method(name, job.context(), params)
    assert _equal(_state(out.model), _state(again.model)), f"{name}: the same seed gave different weights"

    if entry.supports_adapter:
        peft_model = out.adapter_model
        assert peft_model is not None, f"{name} supports adapter output but returned no adapter"
        base = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in peft_model.state_dict().items() if "lora_" not in k}
        assert _equal({k: original_state[k] for k in base}, {k: v.detach() for k, v in base.items()}), f"{name} changed non-adapter weights"
        x, _ = job.splits.forget.take(torch.arange(min(64, len(job.splits.forget))))
        with torch.no_grad():
            torch.testing.assert_close(peft_model.eval()(x), out.model(x), rtol=1e-4, atol=1e-4)
