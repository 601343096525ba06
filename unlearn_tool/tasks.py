"""What kind of prediction a model makes, and everything that depends on it.

The pipeline, the audit and bench ask the job's task instead of assuming classification:
its training loss, the per-sample figures an audit reads (predictions, confidence, loss),
its utility metrics, what "forget by class" (or, for regression, by target range) selects,
which output rows distances compare, which membership attacks apply and which plots the
report draws. `Classification` and `Regression` implement the same interface.
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
    non_finite: int = 0  # samples whose raw outputs hold NaN or Inf (a diverged model; evaluate.non_finite_where)

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
    target_range: Optional[tuple[float, float, int]] = None  # regression range unlearning: (min, max, column)


class Task(ABC):
    name: str
    # per-sample statistic each membership attack reads (an attack whose feature is absent does not run)
    attack_features: dict[str, str] = {}
    # the plots the audit report draws for this task, by name (audit/report.py renders them)
    report_plots: tuple[str, ...] = ()
    # rows are probability vectors (JS divergence and ZRF apply); False: raw outputs in target units
    probabilistic: bool = True
    # the losses a method's `loss` parameter may name besides "auto" (the task's own training loss)
    losses: tuple[str, ...] = ()

    def adapt_targets(self, data: Any, where: str) -> Optional[str]:
        """Bring a split's targets into the task's form in place; a note when something was converted."""
        return None

    def range_mask(self, target_range: Any, targets: "torch.Tensor") -> "torch.Tensor":
        from .errors import DataError

        raise DataError(f"forget.target_range is for regression requests; a {self.name} request forgets classes, indices or IDs")

    def summary_keys(self, scenario: str) -> tuple[str, ...]:
        """The utility figures `apply` prints before and after."""
        return ()

    def heldout(self, info: ForgetInfo, test: SetOutputs) -> SetOutputs:
        """The never-seen population the forget set is compared with (default: the whole test split)."""
        return test

    def loss_fn(self, name: str = "auto") -> Any:
        """The training loss a method's `loss` parameter names ("auto": the task's own)."""
        if name == "auto":
            return self.loss
        from .errors import MethodError

        raise MethodError(f"loss {name} is not a {self.name} loss; use loss: auto" + (f" or one of {', '.join(self.losses)}" if self.losses else ""))

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
        if targets.dtype.is_floating_point:
            raise DataError(f"{where}: the targets are float ({targets.dtype}) but the request is classification, whose class labels "
                            "are integers; give int64 labels, or set task: regression for a model that predicts numbers")
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_outputs:
            raise DataError(f"{where}: labels range {lo}..{hi} but the model has {num_outputs} outputs; set model.kwargs num_classes (num_labels for hf: models) to match the data")

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

    def summary_keys(self, scenario: str) -> tuple[str, ...]:
        return ("retain_acc", "forget_acc", "test_acc") + (("test_remaining_acc", "test_forgotten_acc") if scenario == "class" else ())


MIN_HELDOUT_IN_RANGE = 5  # fewer test samples in a forgotten range and the whole test split stands in for them
ERROR_FLOOR = 1e-12  # log of an absolute error: an exact prediction is not -inf


def _as_matrix(values: np.ndarray, width: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v.reshape(len(v), -1) if v.ndim > 1 or width != 1 else v.reshape(-1, 1)


def range_column(targets: np.ndarray, column: int) -> np.ndarray:
    """The target column a range applies to ((N,) targets: the targets themselves)."""
    t = np.asarray(targets)
    return t if t.ndim == 1 else t[:, column]


MAX_TARGET = 1e18  # |target| beyond this: (target - output)^2 overflows float32 (3.4e38) within a few-fold error


class Regression(Task):
    """Models that predict numbers: targets float, (N,) or (N, k), one output per target column.

    Per sample: absolute error and squared error (means over the k outputs), the signed residual
    (mean of prediction - target), and the loss the audit's attacks read (the squared error, the MSE
    the model trains on). Utility: MAE, RMSE and R^2 on retain, forget and test data (Deep Regression
    Unlearning's adapted metrics); for range unlearning also the MAE on test samples outside and inside
    the forgotten range.
    """

    name = "regression"
    attack_features = {"mia_error_efficacy": "log_err", "mia_loss": "loss"}
    report_plots = ("residuals", "mia_scores")
    probabilistic = False
    losses = ("mse", "l1")

    def adapt_targets(self, data: Any, where: str) -> Optional[str]:
        import torch

        t = data.targets
        if t.dtype.is_floating_point:
            return None
        if t.dtype == torch.bool:
            from .errors import DataError

            raise DataError(f"{where}: the targets are booleans; regression targets are numbers (float)")
        data.targets = t.float()
        if data.x is not None:
            data.dataset = torch.utils.data.TensorDataset(data.x, data.targets)
        return f"{where}: integer targets read as float for regression (task: regression)"

    def check_targets(self, targets: "torch.Tensor", num_outputs: int, where: str) -> None:
        import torch

        from .errors import DataError

        if len(targets) == 0:
            raise DataError(f"{where}: the split is empty; give a split with samples")
        width = 1 if targets.dim() == 1 else int(targets.shape[1])
        if targets.dim() > 2:
            raise DataError(f"{where}: targets have shape {tuple(targets.shape)}; regression targets are (N,) or (N, k)")
        if width != num_outputs:
            raise DataError(f"{where}: {width} target column(s) but the model has {num_outputs} outputs; set model.kwargs "
                            f"num_outputs (builtin models; num_classes for torchvision) to {width}")
        if not bool(torch.isfinite(targets).all()):
            raise DataError(f"{where}: the targets hold NaN or Inf; every target must be finite")
        big = float(targets.abs().max())
        if big > MAX_TARGET:  # finetune and neggrad+ stopped as diverged; train, retrain, rfa, ... fitted nothing and said ok
            raise DataError(f"{where}: the targets reach {big:.3g}, whose squared error overflows float32 in training; standardise "
                            "the targets (z-score) or give them in a larger unit")

    def loss(self, outputs: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        return F.mse_loss(outputs, targets.reshape(outputs.shape).to(outputs.dtype))

    def loss_fn(self, name: str = "auto") -> Any:
        import torch.nn.functional as F

        if name == "l1":
            return lambda out, y: F.l1_loss(out, y.reshape(out.shape).to(out.dtype))
        if name in ("mse", "auto"):
            return self.loss
        return super().loss_fn(name)

    def per_sample(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        out = np.asarray(outputs, dtype=np.float64)
        y = _as_matrix(targets, out.shape[1]).reshape(out.shape)
        resid = out - y
        abs_err = np.abs(resid).mean(1)
        sq_err = (resid ** 2).mean(1)
        return {"abs_err": abs_err, "sq_err": sq_err, "loss": sq_err, "resid": resid.mean(1),
                "log_err": np.log(abs_err + ERROR_FLOOR)}

    def rows(self, outputs: np.ndarray) -> np.ndarray:
        return np.asarray(outputs, dtype=np.float64)

    def utility(self, sets: dict[str, SetOutputs], info: ForgetInfo) -> dict[str, Any]:
        from .audit import metrics as M

        res: dict[str, Any] = {}
        for name in ("retain", "forget", "test"):
            if name in sets:
                s = sets[name]
                res[f"{name}_mae"] = M.mae(s.abs_err)
                res[f"{name}_rmse"] = M.rmse(s.sq_err)
                res[f"{name}_r2"] = M.r2(s.sq_err, s.targets)
        res["test_remaining_mae"] = res["test_forgotten_mae"] = None
        if "test" in sets and info.scenario == "range" and info.target_range is not None:
            t = sets["test"]
            inside = self._in_range(t.targets, info.target_range)
            res["test_remaining_mae"] = M.mae(t.abs_err[~inside]) if (~inside).any() else None
            res["test_forgotten_mae"] = M.mae(t.abs_err[inside]) if inside.any() else None
        return res

    @staticmethod
    def _in_range(targets: np.ndarray, target_range: tuple[float, float, int]) -> np.ndarray:
        lo, hi, column = target_range
        v = range_column(targets, column)
        return (v >= lo) & (v <= hi)

    def forget_mask(self, classes: Optional[list[int]], targets: "torch.Tensor", num_outputs: int) -> "torch.Tensor":
        from .errors import DataError

        raise DataError("forget.classes: a regression request has no classes; forget a range of targets with "
                        "forget.target_range: {min, max}, or samples by indices or IDs")

    def range_mask(self, target_range: Any, targets: "torch.Tensor") -> "torch.Tensor":
        import torch

        from .errors import DataError

        column = int(target_range.column)
        width = 1 if targets.dim() == 1 else int(targets.shape[1])
        if column >= width:
            raise DataError(f"forget.target_range.column: {column} but the targets have {width} column(s) (0..{width - 1}); name one of them")
        v = targets if targets.dim() == 1 else targets[:, column]
        mask = (v >= target_range.min) & (v <= target_range.max)
        if not bool(mask.any()):
            raise DataError(f"forget.target_range: no train target lies in [{target_range.min:g}, {target_range.max:g}] (the targets "
                            f"run from {float(v.min()):.4g} to {float(v.max()):.4g}); give a range that holds samples")
        return mask.to(torch.bool)

    def summary_keys(self, scenario: str) -> tuple[str, ...]:
        return ("retain_mae", "forget_mae", "test_mae") + (("test_remaining_mae", "test_forgotten_mae") if scenario == "range" else ())

    def heldout(self, info: ForgetInfo, test: SetOutputs) -> SetOutputs:
        """Range unlearning: the test samples whose targets lie in the forgotten range (when there are at least
        MIN_HELDOUT_IN_RANGE), the never-seen counterpart of the forget set; otherwise the whole test split."""
        if info.scenario != "range" or info.target_range is None:
            return test
        inside = self._in_range(test.targets, info.target_range)
        if inside.sum() < MIN_HELDOUT_IN_RANGE:
            return test
        return SetOutputs(targets=test.targets[inside], stats={k: v[inside] for k, v in test.stats.items()})


CLASSIFICATION = Classification()
REGRESSION = Regression()
TASKS: dict[str, Task] = {CLASSIFICATION.name: CLASSIFICATION, REGRESSION.name: REGRESSION}


def get_task(name: str = "classification") -> Task:
    from .errors import RequestError

    if name not in TASKS:
        raise RequestError(f"task '{name}' is not supported; use one of: {', '.join(TASKS)}")
    return TASKS[name]
