"""What kind of prediction a model makes, and everything that depends on it.

The pipeline, the audit and bench ask the job's task instead of assuming classification:
its training loss, the per-sample figures an audit reads (predictions, confidence, loss),
its utility metrics, what "forget by class" selects, which output rows distances compare,
which membership attacks apply and which plots the report draws. Classification is the
task today; regression implements the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class SetOutputs:
    """One model's per-sample figures on one data set (task-defined arrays), plus output rows of a fixed subset."""

    targets: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # what distances compare (softmax rows)

    def __getattr__(self, name: str) -> np.ndarray:  # out.loss, out.conf, ...: the task's per-sample arrays
        stats = self.__dict__.get("stats", {})
        if name in stats:
            return stats[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class ForgetInfo:
    """What the metrics need to know of the request: scenario, forgotten classes, number of outputs."""

    scenario: str
    forget_classes: tuple[int, ...] = ()
    num_outputs: int = 0


class Task(ABC):
    name: str
    # per-sample statistic each membership attack reads (an attack whose feature is absent does not run)
    attack_features: dict[str, str] = {}
    # the plots the audit report draws for this task, by name (audit/report.py renders them)
    report_plots: tuple[str, ...] = ()

    @abstractmethod
    def check_targets(self, targets: "torch.Tensor", num_outputs: int, where: str) -> None:
        """Raise DataError if a split's targets do not fit the model's outputs."""

    @abstractmethod
    def loss(self, outputs: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        """The mean training loss of a batch."""

    @abstractmethod
    def per_sample(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Per-sample figures of a batch of raw outputs (float64)."""

    @abstractmethod
    def rows(self, outputs: np.ndarray) -> np.ndarray:
        """The per-sample output rows distances between models compare."""

    @abstractmethod
    def utility(self, sets: dict[str, SetOutputs], info: ForgetInfo) -> dict[str, Any]:
        """Utility metrics of one model from its outputs on retain, forget and test data."""

    @abstractmethod
    def forget_mask(self, classes: Optional[list[int]], targets: "torch.Tensor", num_outputs: int) -> "torch.Tensor":
        """Which train samples a forget-by-class request selects (DataError for classes that are not there)."""


class Classification(Task):
    name = "classification"
    attack_features = {"mia_efficacy": "conf", "mia_entropy": "ent", "mia_loss": "loss"}
    report_plots = ("per_class", "loss")

    def check_targets(self, targets: "torch.Tensor", num_outputs: int, where: str) -> None:
        from .errors import DataError

        if len(targets) == 0:
            raise DataError(f"{where}: the split is empty; give a split with samples")
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_outputs:
            raise DataError(f"{where}: labels range {lo}..{hi} but the model has {num_outputs} outputs; set model.kwargs num_classes to match the data")

    def loss(self, outputs: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        return F.cross_entropy(outputs, targets)

    def per_sample(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        from .audit import metrics as M

        p = M.softmax(outputs)
        return {"pred": outputs.argmax(1).astype(np.int64), "conf": M.true_class_confidence(p, targets),
                "ent": M.entropy(p), "loss": M.cross_entropy(outputs, targets)}

    def rows(self, outputs: np.ndarray) -> np.ndarray:
        from .audit import metrics as M

        return M.softmax(outputs)

    def utility(self, sets: dict[str, SetOutputs], info: ForgetInfo) -> dict[str, Any]:
        from .audit import metrics as M

        res: dict[str, Any] = {}
        for name in ("retain", "forget", "test"):
            if name in sets:
                s = sets[name]
                res[f"{name}_acc"] = M.accuracy(s.pred, s.targets)
        if "forget_acc" in res:
            res["ua"] = 1.0 - res["forget_acc"]
        res["test_remaining_acc"] = res["test_forgotten_acc"] = None
        if "test" in sets:
            t = sets["test"]
            if info.scenario == "class":
                forgotten = np.isin(t.targets, np.asarray(info.forget_classes, dtype=np.int64))
                res["test_remaining_acc"] = M.accuracy(t.pred[~forgotten], t.targets[~forgotten]) if (~forgotten).any() else None
                res["test_forgotten_acc"] = M.accuracy(t.pred[forgotten], t.targets[forgotten]) if forgotten.any() else None
            if info.num_outputs:
                res["per_class_acc"] = M.per_class_accuracy(t.pred, t.targets, info.num_outputs)
        return res

    def forget_mask(self, classes: Optional[list[int]], targets: "torch.Tensor", num_outputs: int) -> "torch.Tensor":
        import torch

        from .errors import DataError

        classes = list(classes or [])
        outside = [c for c in classes if c >= num_outputs]
        if outside:
            raise DataError(f"forget.classes: class {outside[0]} is outside the model's {num_outputs} classes (0..{num_outputs - 1}); name a class the model predicts")
        present = set(torch.unique(targets).tolist())
        absent = [c for c in classes if c not in present]
        if absent:
            raise DataError(f"forget.classes: class {absent[0]} has no sample in the train split; name a class that occurs in the data")
        return torch.isin(targets, torch.tensor(classes, dtype=targets.dtype))


CLASSIFICATION = Classification()
TASKS: dict[str, Task] = {CLASSIFICATION.name: CLASSIFICATION}


def get_task(name: str = "classification") -> Task:
    from .errors import RequestError

    if name not in TASKS:
        raise RequestError(f"task '{name}' is not supported; use one of: {', '.join(TASKS)}")
    return TASKS[name]
