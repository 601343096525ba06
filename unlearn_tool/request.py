"""The deletion request (YAML, schema version 1): what to forget, from which model and data.

Validated with pydantic; unknown keys are errors; relative paths are relative to
the request file's folder. This module does not import torch, so a malformed
request is rejected instantly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from .errors import RequestError, shown

SCHEMA_VERSION = 1
MAX_REQUEST_BYTES = 1 << 20  # a deletion request is a short YAML file; anything larger is a mistake or an attack
MAX_SEED = 2**32 - 1  # numpy's seed range; torch takes it too
MAX_RESIZE = 4096
MIN_NORMALIZE_STD = 1e-6  # preprocess.normalize: dividing [0, 1] pixels by less overflows float32 soon after


# ---------------------------------------------------------------- YAML: safe, unambiguous


class _RequestLoader(yaml.SafeLoader):
    """yaml.SafeLoader, stricter: a deletion request must mean one thing.

    - duplicate keys are errors (PyYAML silently keeps the last one);
    - anchors and aliases are refused (they add nothing to a request, and alias bombs expand exponentially);
    - `1e-3` is a float, as in YAML 1.2 (YAML 1.1 reads it as a string).
    """

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (*name) are not allowed in a deletion request; write the values out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}' (a request must mean one thing); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_RequestLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_RequestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_yaml(text: str) -> Any:
    """Parse YAML with the strict safe loader (never constructs Python objects)."""
    return yaml.load(text, Loader=_RequestLoader)  # noqa: S506 - _RequestLoader is a SafeLoader


def read_regular_file(path: Path, what: str, fix: str, max_bytes: Optional[int] = None) -> bytes:
    """The bytes of a regular file; FIFOs, devices and folders are refused before anything is opened (no hang)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RequestError(f"{what} {path} not found; {fix}") from None
    except OSError as e:
        raise RequestError(f"{what} {path} cannot be read ({e.strerror}); {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RequestError(f"{what} {path} is not a regular file; {fix}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise RequestError(f"{what} {path} is {st.st_size:,} bytes, more than the {max_bytes:,} allowed; {fix}")
    try:
        with open(path, "rb") as f:
            return f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as e:
        raise RequestError(f"{what} {path} cannot be read ({e.strerror}); {fix}") from None
DATA_SOURCES = ("tensors", "imagefolder", "csv", "sklearn:digits", "sklearn:diabetes", "sklearn:digits-rotation", "torchvision:<Dataset>")
SKLEARN_SOURCES = ("sklearn:digits", "sklearn:diabetes", "sklearn:digits-rotation")
TASK_NAMES = ("classification", "regression")
TORCHVISION_DATASETS = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST", "SVHN")


class _Strict(BaseModel):
    # strict: `true` is not 1 and "3" is not 3; a deletion request must not be coerced into meaning something else
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSpec(_Strict):
    arch: str = Field(
        description="torchvision:<name> (e.g. torchvision:resnet18), builtin:<name> (mlp, small_cnn), hf:<folder> (a "
        "transformers image classifier's save_pretrained folder, relative to the request), timm:<name> (needs the timm "
        "extra), or python:<module>:<callable> (runs your code; the module beside the request or in a --code-path folder; "
        "an installed module only with --trust-code)."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the constructor.")

    @field_validator("arch")
    @classmethod
    def _arch_form(cls, v: str) -> str:
        if not re.fullmatch(r"(torchvision:[A-Za-z0-9_]+|builtin:[A-Za-z0-9_]+|python:[A-Za-z0-9_.]+:[A-Za-z0-9_]+"
                            r"|hf:[^\x00-\x1f]+|timm:[A-Za-z0-9_.-]+)", v):
            raise ValueError(
                f"{shown(v, 40, as_repr=True)} is not a model source; use torchvision:<name>, builtin:<name>, hf:<folder>, timm:<name> "
                "or python:<module>:<callable>"
            )
        return v

    @model_validator(mode="after")
    def _some_outputs(self) -> "ModelSpec":
        """0 classes is no classifier: torchvision builds a zero-width head (with a raw warning) and timm a headless feature
        model whose 512 features would be taken for 512 classes. A python: callable's kwargs mean what its author says."""
        if self.arch.startswith("python:"):
            return self
        for key in ("num_classes", "num_outputs", "num_labels"):
            value = self.kwargs.get(key)
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"kwargs.{key} is {json.dumps(value)}; give a whole number of outputs (the number of classes, or "
                                 "regression targets)")
            if isinstance(value, (int, float)) and value < 1:
                raise ValueError(f"kwargs.{key} is {value:g}, and a model needs at least 1 output; set it to the number of "
                                 "classes (regression: the number of targets)")
        return self


class Normalize(_Strict):
    mean: list[float] = Field(description="Per-channel mean subtracted after scaling to [0, 1].")
    std: list[float] = Field(description="Per-channel standard deviation divided after the mean.")

    @model_validator(mode="after")
    def _same_length(self) -> "Normalize":
        import math

        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean and std must be non-empty lists of the same length (one value per channel)")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):  # NaN or Inf made every input NaN, 0 or Inf: validate said ok
            raise ValueError("mean and std must be finite numbers")
        if any(s < MIN_NORMALIZE_STD for s in self.std):
            raise ValueError(f"std values must be at least {MIN_NORMALIZE_STD:g} (a channel's spread of [0, 1] pixel values; 1e-45 overflowed every input)")
        return self


class Preprocess(_Strict):
    resize: Optional[int] = Field(None, gt=0, le=MAX_RESIZE, description="Resize images to this square size (torchvision, imagefolder, csv, tensors of images).")
    grayscale: bool = Field(False, description="Convert images to one channel (imagefolder, csv).")
    normalize: Optional[Normalize] = Field(None, description="Channel normalisation applied last.")


class DataSpec(_Strict):
    source: str = Field(
        description="tensors (a .safetensors or .npz file with x, y), torchvision:<Dataset> (CIFAR10, CIFAR100, "
        "MNIST, FashionMNIST, KMNIST, SVHN) with root, imagefolder with path, csv (a manifest with columns path,label) "
        "with path, or built in: sklearn:digits (classification), sklearn:diabetes and sklearn:digits-rotation (regression)."
    )
    path: Optional[str] = Field(None, description="File (tensors, csv) or folder (imagefolder); relative to the request.")
    root: Optional[str] = Field(None, description="torchvision data root folder; relative to the request.")
    download: bool = Field(False, description="Let torchvision download the data set into root (needs network).")
    split: Optional[str] = Field(
        None, description="Which split to read: train/test (default: the role, train or test); SVHN also 'extra'."
    )
    ids_path: Optional[str] = Field(
        None, description="tensors: a text file with one record ID per line, in the samples' order (instead of an `ids` key)."
    )
    preprocess: Preprocess = Field(default_factory=Preprocess, description="Resize and normalisation.")

    @model_validator(mode="after")
    def _source_needs(self) -> "DataSpec":
        s = self.source
        if s in ("tensors", "imagefolder", "csv"):
            if not self.path:
                raise ValueError(f"source '{s}' needs 'path'")
        elif s.startswith("torchvision:"):
            name = s.split(":", 1)[1]
            if name not in TORCHVISION_DATASETS:
                raise ValueError(f"unknown torchvision data set '{name}'; supported: {', '.join(TORCHVISION_DATASETS)}")
            if not self.root:
                raise ValueError(f"source '{s}' needs 'root' (the folder that holds the data set)")
        elif s not in SKLEARN_SOURCES:
            raise ValueError(f"unknown data source '{s}'; use one of: {', '.join(DATA_SOURCES)}")
        if self.split is not None and self.split not in ("train", "test", "extra"):
            raise ValueError(f"split '{self.split}' is not one of train, test, extra")
        if self.preprocess.grayscale and s not in ("imagefolder", "csv"):  # it was ignored, and the channel error then advised it
            raise ValueError(f"preprocess.grayscale converts image files (imagefolder, csv), not '{s}' data; give the model the "
                             "data's channels (e.g. model.kwargs in_channels: 3), or convert the data to one channel")
        if self.split is not None and s in ("tensors", "imagefolder", "csv"):  # one file or folder is one split: it was ignored
            raise ValueError(f"split is for sources that hold several splits (torchvision, sklearn), not '{s}'; give each split "
                             "its own path")
        if self.split == "extra" and s != "torchvision:SVHN":  # it read the test split as train (MNIST, CIFAR, sklearn)
            raise ValueError(f"split 'extra' exists for torchvision:SVHN only, not '{s}'; give train or test")
        if self.ids_path is not None and s != "tensors":  # it was ignored, and forget.ids then said "give ... ids_path"
            raise ValueError(f"ids_path is read for source 'tensors' only, not '{s}'; imagefolder and csv take their record IDs "
                             "from the files (paths, or an id column); a built-in or torchvision source has none: forget by indices")
        return self


class DataSection(_Strict):
    train: DataSpec = Field(description="The training data the model saw; forget indices address this split.")
    test: DataSpec = Field(description="Held-out data, for test accuracy and as the never-seen reference.")
    batch_size: int = Field(128, gt=0, le=65536, description="Batch size for evaluation and the methods' default loaders.")


class TargetRange(_Strict):
    min: float = Field(description="Lowest target value forgotten (inclusive).")
    max: float = Field(description="Highest target value forgotten (inclusive).")
    column: int = Field(0, ge=0, description="For targets with several columns (N, k): the column the range applies to (default 0).")

    @model_validator(mode="after")
    def _ordered(self) -> "TargetRange":
        import math

        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("min and max must be finite numbers")
        if self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}; give min <= max")
        return self


class ForgetSpec(_Strict):
    classes: Optional[list[int]] = Field(None, description="Class unlearning: every train sample of these classes.")
    indices: Optional[list[int]] = Field(None, description="Sample unlearning: positions in the train split.")
    indices_file: Optional[str] = Field(None, description="Sample unlearning: a text file, one index per line.")
    ids: Optional[list[Union[StrictStr, StrictInt]]] = Field(None, description="Sample unlearning by record ID (the data's ids).")
    ids_file: Optional[str] = Field(None, description="Sample unlearning: record IDs in a text file (one per line) or a CSV (see ids_column).")
    ids_column: Optional[str] = Field(None, description="With ids_file: the CSV column holding the IDs (the file is then read as CSV).")
    target_range: Optional[TargetRange] = Field(
        None, description="Regression: every train sample whose target lies in [min, max] (the regression analogue of a class).")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ForgetSpec":
        given = [k for k in FORGET_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(FORGET_KEYS)} (got {', '.join(given) or 'none'})")
        if self.ids_column is not None and self.ids_file is None:
            raise ValueError("ids_column goes with ids_file (a CSV of record IDs)")
        for key in ("classes", "indices"):
            values = getattr(self, key)
            if values is not None:
                if not values:
                    raise ValueError(f"'{key}' is empty; name at least one")
                if min(values) < 0:
                    raise ValueError(f"'{key}' has a negative value {min(values)}; values are >= 0")
                if len(set(values)) != len(values):
                    dup = sorted({v for v in values if values.count(v) > 1})[:5]
                    raise ValueError(f"'{key}' repeats {dup}; list each once")
        if self.ids is not None:
            if not self.ids:
                raise ValueError("'ids' is empty; name at least one record ID")
            text = [str(i) for i in self.ids]
            if len(set(text)) != len(text):
                raise ValueError(f"'ids' repeats {len(text) - len(set(text))} record ID(s); list each once")
        return self

    @property
    def scenario(self) -> Literal["class", "sample", "range"]:
        if self.classes is not None:
            return "class"
        return "range" if self.target_range is not None else "sample"

    @property
    def by_ids(self) -> bool:
        return self.ids is not None or self.ids_file is not None


FORGET_KEYS = ("classes", "indices", "indices_file", "ids", "ids_file", "target_range")


class MethodSpec(_Strict):
    name: str = Field("rfa", description="Registered method name (see `unlearn methods`).")
    params: dict[str, Any] = Field(default_factory=dict, description="Method parameters (see `unlearn methods NAME`).")


class OutputSpec(_Strict):
    mode: Literal["merged", "adapter"] = Field(
        "merged", description="merged: a drop-in checkpoint with the same keys; adapter: a PEFT adapter folder."
    )
    path: Optional[str] = Field(None, description="Where to write; default <stem>.unlearned.safetensors beside the input.")


class AuditSpec(_Strict):
    gates: list[str] = Field(default_factory=list, description="Gate expressions, e.g. 'forget_acc <= 0.02'.")
    reference: Optional[str] = Field(None, description="Retrained reference checkpoint; relative to the request.")


class Request(_Strict):
    version: Literal[1] = Field(description="Schema version; 1.")
    id: str = Field(description="Free text, echoed in outputs and metadata.")
    task: Literal["classification", "regression"] = Field(
        "classification", description="What the model predicts: classification (class labels) or regression (float targets).")
    model: ModelSpec
    data: DataSection
    forget: ForgetSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed for every random choice (0..2**32-1); same seed, same CPU output.")

    @model_validator(mode="after")
    def _forget_fits_task(self) -> "Request":
        if self.task == "regression" and self.forget.classes is not None:
            raise ValueError("forget.classes: a regression request has no classes; forget a range of targets with "
                             "forget.target_range: {min, max}, or samples with forget.indices / indices_file / ids")
        if self.task == "classification" and self.forget.target_range is not None:
            raise ValueError("forget.target_range is for regression requests (task: regression); forget a class with forget.classes")
        return self

    # Set by load_request, not by the YAML.
    _base_dir: Path = Path(".")
    _path: Optional[Path] = None
    _sha256: str = ""

    def resolve(self, relative: str) -> Path:
        """A path from the request, relative to the request file's folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def inputs(self) -> dict[str, tuple[Path, bool]]:
        """Every file or folder this request reads, by name, with whether outputs may be written inside it (a data
        folder or torchvision root may hold them, and a file named where a folder is (its own check names that); none
        of these may be an output, or inside one). `--force` had replaced a tensors data file or an hf: folder with a
        checkpoint."""
        out: dict[str, tuple[Path, bool]] = {}
        for role in ("train", "test"):
            spec = getattr(self.data, role)
            for key in ("path", "root", "ids_path"):
                if getattr(spec, key):  # an imagefolder reads every sub-folder as a class: an output there (a ledger.d) would be one
                    inside_ok = not (key == "path" and spec.source == "imagefolder")
                    out[f"request's data.{role}.{key}"] = (self.resolve(getattr(spec, key)), inside_ok)
        for key in ("indices_file", "ids_file"):
            if getattr(self.forget, key):
                out[f"request's forget.{key}"] = (self.resolve(getattr(self.forget, key)), True)
        if self.audit.reference:
            out["request's audit.reference"] = (self.resolve(self.audit.reference), False)
        kind, _, rest = self.model.arch.partition(":")
        if kind == "hf" and rest:
            out["request's hf: model folder"] = (self.resolve(rest), False)
        return out

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def path(self) -> Optional[Path]:
        return self._path

    @property
    def sha256(self) -> str:
        return self._sha256

    def audit_reference(self) -> Optional[Path]:
        """The retrained reference the request's audit section names, resolved against the request's folder."""
        return self.resolve(self.audit.reference) if self.audit.reference else None

    def forget_ids_list(self) -> Optional[list[str]]:
        """The record IDs to forget (reading ids_file, as lines or as a CSV column), or None when not by ID."""
        if self.forget.ids is not None:
            return [str(i) for i in self.forget.ids]
        if self.forget.ids_file is None:
            return None
        path = self.resolve(self.forget.ids_file)
        raw = read_regular_file(path, "forget.ids_file:", "give a text file with one record ID per line, or a CSV with ids_column")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise RequestError(f"forget.ids_file: {path} is not UTF-8 text; give one record ID per line") from None
        if self.forget.ids_column is not None:
            import csv
            import io

            reader = csv.DictReader(io.StringIO(text))
            if reader.fieldnames is None or self.forget.ids_column not in reader.fieldnames:
                raise RequestError(f"forget.ids_column: {path} has no column '{self.forget.ids_column}'; its columns: {', '.join(reader.fieldnames or [])}")
            ids = [(row.get(self.forget.ids_column) or "").strip() for row in reader]
            ids = [i for i in ids if i]
        else:
            ids = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not ids:
            raise RequestError(f"forget.ids_file: {path} names no record ID; write one per line")
        if len(set(ids)) != len(ids):
            raise RequestError(f"forget.ids_file: {path} repeats {len(ids) - len(set(ids))} record ID(s); list each once")
        return ids

    def forget_indices_list(self) -> Optional[list[int]]:
        """The sample indices to forget (reading indices_file), or None for class unlearning."""
        if self.forget.indices is not None:
            return list(self.forget.indices)
        if self.forget.indices_file is None:
            return None
        path = self.resolve(self.forget.indices_file)
        raw = read_regular_file(path, "forget.indices_file:", "give a text file with one index per line")
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise RequestError(f"forget.indices_file: {path} is not UTF-8 text; give a text file with one index per line") from None
        out: list[int] = []
        for n, line in enumerate(lines, 1):
            s = line.split("#", 1)[0].strip()
            if not s:
                continue
            # the file's contents are never echoed: an error names the line, not what it holds
            if not re.fullmatch(r"\+?[0-9]{1,18}", s):
                raise RequestError(f"forget.indices_file: line {n} of {path} is not a non-negative integer index; one index per line")
            out.append(int(s))
        if not out:
            raise RequestError(f"forget.indices_file: {path} has no indices; write one index per line")
        if min(out) < 0:
            raise RequestError(f"forget.indices_file: negative index {min(out)} in {path}; indices are >= 0")
        if len(set(out)) != len(out):
            raise RequestError(f"forget.indices_file: {path} repeats indices; list each once")
        return out


def method_params_for(request: "Request", name: str, overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The parameters a run of method `name` gets: the request's method.params when the request names that
    method (else none), then `overrides` (--param) on top. The one place this policy lives.

    A relative file or folder (a parameter marked IS_PATH) given in the request is relative to the request's folder,
    as every path in it is; one given with --param, to the working folder, as every path on the command line is."""
    base = dict(request.method.params) if request.method.name == name else {}
    if base:
        from .method_catalog import describe

        paths = {p["name"] for p in describe(name)["params"] if p.get("path")}
        base = {k: str(request.resolve(v)) if k in paths and isinstance(v, str) and v.strip() else v for k, v in base.items()}
    return {**base, **(overrides or {})}


def parse_key_values(pairs: list[str]) -> dict[str, Any]:
    """--param k=v pairs; values are parsed as YAML scalars/lists (safe_load), so 'lr=0.01' gives a float."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise RequestError(f"--param {pair!r}: expected key=value, e.g. --param lr=0.01")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.+-]*", key):
            raise RequestError(f"--param {key!r}: not a parameter name; expected key=value, e.g. --param lr=0.01")
        try:
            out[key] = safe_yaml(value) if value.strip() else ""
        except (yaml.YAMLError, RecursionError) as e:
            problem = getattr(e, "problem", None) or "not a YAML scalar or list"
            raise RequestError(f"--param {key}: cannot read the value ({problem}); give a number, a word or a [list]") from None
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        parent_loc = first["loc"][:-1]
        allowed = _allowed_keys(parent_loc)
        msg = f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Request
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        # unwrap Optional[X]
        args = getattr(ann, "__args__", None)
        if args:
            ann = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        model = ann
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _surrogate(text: str) -> Optional[str]:
    """The first surrogate code point in `text` (half of a pair, or a lone one), else None."""
    return next((c for c in text if "\ud800" <= c <= "\udfff"), None)


def _pairs_joined(value: Any) -> Any:
    """`value` with each surrogate pair in its strings and keys joined into its character: YAML reads the escapes that
    JSON writers emit for an emoji ("\\ud83d\\ude00", json.dumps' default) as two separate halves. A lone half stays
    (refused by _not_text)."""
    def text(s: str) -> str:
        if _surrogate(s) is None:
            return s
        try:
            return s.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            return s

    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {(text(k) if isinstance(k, str) else k): _pairs_joined(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_pairs_joined(v) for v in value]
    return value


def _not_text(raw: Any) -> Optional[tuple[str, str]]:
    """(dotted place, character) of the first key or string in the parsed YAML that UTF-8 cannot encode: a "\\ud800"
    escape gives a lone surrogate, which passed the schema and failed every later write (exit 1, "unexpected
    UnicodeEncodeError"). Iterative: the YAML may be nested deeply."""
    stack: list[tuple[str, Any]] = [("", raw)]
    while stack:
        where, value = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
        if items is None:
            if isinstance(value, str):
                lone = _surrogate(value)
                if lone is not None:
                    return where, lone
            continue
        for key, item in items:
            place = f"{where}.{key}" if where and isinstance(key, str) else f"{where}[{key}]" if where else str(key)
            if isinstance(key, str):
                lone = _surrogate(key)
                if lone is not None:
                    return f"{where or 'top level'} (a key)", lone
            stack.append((place, item))
    return None


def parse_request(text: str, source: str = "request", base_dir: Path | None = None) -> Request:
    """Parse and validate request YAML text (yaml.safe_load only)."""
    try:
        raw = safe_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        if "constructor for the tag" in problem:
            problem = "tags such as !!python/... are not allowed"
        raise RequestError(f"{source}: malformed YAML{where}: {problem}; fix the request") from None
    except RecursionError:
        raise RequestError(f"{source}: the YAML is nested too deeply; a request is a few levels of keys") from None
    if not isinstance(raw, dict):
        raise RequestError(f"{source}: expected a mapping of keys (version, id, model, data, forget, ...), got {type(raw).__name__}")
    try:
        raw = _pairs_joined(raw)
    except RecursionError:
        raise RequestError(f"{source}: the YAML is nested too deeply; a request is a few levels of keys") from None
    bad = _not_text(raw)
    if bad is not None:
        where, char = bad
        raise RequestError(f"{source}: {where or 'a key'}: holds a lone surrogate escape (\\u{ord(char):04x}), which is not text that "
                           "can be written (reports, ledger, metadata are UTF-8); give valid Unicode")
    if "version" in raw and (type(raw["version"]) is not int or raw["version"] != SCHEMA_VERSION):
        raise RequestError(f"{source}: version: {shown(raw['version'], 40, as_repr=True)} is not supported; this tool reads version {SCHEMA_VERSION}")
    try:
        req = Request.model_validate(raw)
    except ValidationError as e:
        raise RequestError(_format_validation_error(e, source)) from None
    except RecursionError:
        raise RequestError(f"{source}: a value is nested too deeply; a request is a few levels of keys") from None
    req._base_dir = (base_dir or Path(".")).resolve()
    req._sha256 = hashlib.sha256(text.encode()).hexdigest()
    return req


def load_request(path: "str | Path | Request") -> Request:
    """Read and validate a request file; relative paths in it resolve against its folder. A Request passes through."""
    if isinstance(path, Request):
        return path
    path = Path(path)
    raw = read_regular_file(path, "request file", "give the path of a deletion-request YAML", MAX_REQUEST_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"request file {path} is not UTF-8 text; give a UTF-8 YAML file") from None
    req = parse_request(text, source=str(path), base_dir=path.parent)
    req._path = path.resolve()
    return req
