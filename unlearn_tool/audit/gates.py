"""Gate expressions: `<metric> <op> <number>`, parsed by a regular expression, never evaluated as code."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import AuditError
from .registry import METRICS, finite, gate_metric, gate_names

OPS = ("<=", ">=", "==", "<", ">")
_GATE = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|==|<|>)\s*"
    r"(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$",
    re.ASCII,  # a decimal literal: '١' (Arabic-Indic one) is a digit to \d otherwise, and float() reads it as 1
)

def known_names(task: Optional[str] = None) -> tuple[str, ...]:
    """Every metric name a gate may use (from the metric registry): of one task, or (None) of any task."""
    return gate_names(task)


@dataclass(frozen=True)
class Gate:
    expr: str
    metric: str
    op: str
    threshold: float

    def passes(self, value: Optional[float]) -> bool:
        """An undefined value (None/NaN) never passes: a gate that cannot be measured is not met."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.op == "<=":
            return value <= self.threshold or math.isclose(value, self.threshold, abs_tol=1e-12)
        if self.op == ">=":
            return value >= self.threshold or math.isclose(value, self.threshold, abs_tol=1e-12)
        if self.op == "<":
            return value < self.threshold
        if self.op == ">":
            return value > self.threshold
        return math.isclose(value, self.threshold, rel_tol=1e-9, abs_tol=1e-9)


def parse_gate(expr: str, task: Optional[str] = None) -> Gate:
    """One gate; an unknown metric or malformed expression is an input error naming the fix (the task's metrics, when
    known: a typo in a regression gate listed the classification metrics first)."""
    m = _GATE.match(expr or "")
    if not m:
        raise AuditError(f"gate {expr!r}: expected '<metric> <op> <number>' with op one of {' '.join(OPS)}, e.g. 'forget_acc <= 0.02'")
    name = m.group("name")
    if name not in known_names():
        which = f"{task} gates" if task else "known metrics"
        raise AuditError(f"gate {expr!r}: unknown metric '{name}'; {which}: {', '.join(known_names(task))}")
    threshold = float(m.group("num"))
    if not math.isfinite(threshold):
        raise AuditError(f"gate {expr!r}: the threshold is not a finite number; give e.g. 'forget_acc <= 0.02'")
    return Gate(expr=expr.strip(), metric=name, op=m.group("op"), threshold=threshold)


def parse_gates(exprs: Sequence[str], scenario: str, has_reference: bool, task: str = "classification") -> list[Gate]:
    """Parse every gate before any work, and reject gates this audit cannot measure."""
    gates = [parse_gate(e, task) for e in exprs]
    for g in gates:
        metric = gate_metric(g.metric)
        if g.metric not in known_names(task):
            raise AuditError(f"gate {g.expr!r}: {g.metric} is not measured for {task} models; {task} gates: {', '.join(known_names(task))}")
        if metric is not None and scenario not in metric.scenarios:
            base = g.metric.removesuffix("_gap").removesuffix("_drop").removesuffix("_rise")
            fix = "use test_mae for sample unlearning" if task == "regression" else "use test_acc for sample unlearning"
            raise AuditError(f"gate {g.expr!r}: {base} is defined for {' and '.join(metric.scenarios)} unlearning only; {fix}")
        if g.metric.endswith("_gap") and not has_reference:
            raise AuditError(f"gate {g.expr!r}: gaps are measured against a retrained reference; give --reference (or audit.reference in the request)")
    return gates


def gate_value(metric: str, unlearned: Mapping[str, Any], original: Mapping[str, Any], gaps: Mapping[str, Any]) -> Optional[float]:
    """The number a gate compares: a metric of the unlearned model, a drop from the original, or a gap."""
    if metric.endswith("_gap"):
        key = "avg_gap" if metric == "avg_gap" else metric[: -len("_gap")]
        return _float(gaps.get(key))
    if metric.endswith("_drop"):
        key = metric[: -len("_drop")]
        a, b = _float(original.get(key)), _float(unlearned.get(key))
        return None if a is None or b is None else a - b
    if metric.endswith("_rise"):  # a regression error's relative rise from the original
        key = metric[: -len("_rise")]
        a, b = _float(original.get(key)), _float(unlearned.get(key))
        return None if a is None or b is None or a == 0 else (b - a) / abs(a)
    entry = METRICS.get(metric)
    if entry is not None and entry.kind == "distance":
        kind, part = metric.rsplit("_", 1)
        return _float((unlearned.get(kind) or {}).get(part))
    return _float(unlearned.get(metric))


def evaluate_gates(gates: Sequence[Gate], unlearned: Mapping[str, Any], original: Mapping[str, Any],
                   gaps: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Each gate's value and result, and the verdict: 'pass', 'fail' or 'no gates'."""
    rows = []
    for g in gates:
        value = gate_value(g.metric, unlearned, original, gaps)
        rows.append({"expr": g.expr, "metric": g.metric, "op": g.op, "threshold": g.threshold,
                     "value": value, "passed": g.passes(value)})
    verdict = "no gates" if not rows else ("pass" if all(r["passed"] for r in rows) else "fail")
    return rows, verdict


def _float(v: Any) -> Optional[float]:
    return finite(v)


def check_request_gates(req: Any) -> Optional[str]:
    """A request's audit.gates, as apply --audit parses them (an input error names the fix), for `validate`; returns a note
    when gap gates have no audit.reference, which `unlearn audit --reference` can still supply."""
    gates = parse_gates(req.audit.gates, req.forget.scenario, True, req.task)
    if req.audit_reference() is None and any(g.metric.endswith("_gap") for g in gates):
        return ("the gap gates need a retrained reference: give audit.reference in the request (apply --audit), "
                "or --reference to unlearn audit")
    return None
