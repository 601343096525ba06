"""LoRA plumbing: choose layers, inject adapters, read the residual (bypass) branch, merge, hand to peft for its format.

A LoRA layer computes  y = W x + scaling * B(A(x)): `W x` is the frozen
pre-trained feature, `scaling * B(A(x))` the residual feature that RFA trains.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from contextlib import contextmanager
from typing import Annotated, Iterator, NamedTuple, Optional, Sequence, Union

import torch
from pydantic import AfterValidator
from torch import nn

from .errors import MethodError
from .precision import full_precision

ADAPTER_NAME = "default"


def lora_capable_layers(model: nn.Module) -> list[str]:
    """Linear and (non-grouped) Conv2d layers whose weight the forward pass really uses.

    Excluded: grouped/depthwise and dilated convolutions (peft cannot adapt the former; its LoRA branch of the
    latter drops the dilation, so its output no longer matches the layer's), and projections owned by
    nn.MultiheadAttention (it reads their weights directly, so an adapter there would be silently ignored), and a
    module registered under two names (`self.head2 = self.head`, tied layers): peft replaces it under one name, so a
    forward that calls it by the other skips the adapter (RFA then failed with "unexpected KeyError: 'head'"); and a
    module whose weight another module shares (`self.b.weight = self.a.weight`): both adapters' deltas would be merged
    into the one tensor, a model other than the one trained.
    """
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    owners: dict[int, int] = {}  # a weight shared by two modules (`self.b.weight = self.a.weight`): merging adds both deltas to it
    for m in {id(m): m for _, m in model.named_modules()}.values():
        for q in m.parameters(recurse=False):
            owners[id(q)] = owners.get(id(q), 0) + 1
    owned_by_mha = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            owned_by_mha.update(f"{name}.{child}" if name else child for child, _ in m.named_children())
    names = []
    for name, m in model.named_modules():
        if not name or name in owned_by_mha or counts[id(m)] > 1 or any(owners[id(q)] > 1 for q in m.parameters(recurse=False)):
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.dilation == (1, 1)):
            names.append(name)
    return names


# Layer-selection keywords (target_layers), alone or in a list with names/regexes: the union is adapted.
#   all          every adaptable layer                 head        the last adaptable layer (the classifier)
#   last:N       the last N adaptable layers           blocks:N    every adaptable layer of the last N transformer blocks
#   attention    attention projections (q, k, v, out)  mlp         the other adaptable layers of transformer blocks
#   auto         the measured default of the model's family (default_targets)
KEYWORDS = ("all", "head", "attention", "mlp", "auto")


def check_target_spec(targets: Union[str, list[str]]) -> Union[str, list[str]]:
    """Reject a malformed layer spec when parameters are read (exit 2), not when training starts."""
    specs = [targets] if isinstance(targets, str) else list(targets)
    if not specs:
        raise ValueError("target_layers is empty; give 'auto', 'all', 'head', 'attention', 'mlp', 'last:N', 'blocks:N' or layer names")
    for t in specs:
        if not isinstance(t, str) or not t:
            raise ValueError("target_layers entries must be non-empty layer names or regular expressions")
        m = re.fullmatch(r"(last|blocks):(-?\d+)", t)
        if m:
            if int(m.group(2)) < 1:
                raise ValueError(f"target_layers '{t}': N must be at least 1" + (" (last:1 is the head)" if m.group(1) == "last" else ""))
            continue
        if t.startswith(("last:", "blocks:")):
            raise ValueError(f"target_layers '{t}': expected {t.split(':')[0]}:N with N a whole number")
        try:
            re.compile(t)
        except re.error as e:
            raise ValueError(f"target_layers '{t}' is not a valid regular expression ({e}); give layer names or regexes") from None
    return targets


TargetLayers = Annotated[Union[str, list[str]], AfterValidator(check_target_spec)]


def _is_attention(module: nn.Module) -> bool:
    """An attention module, by its class name: transformers' ViTAttention / ViTSelfAttention / ..., timm's Attention."""
    return "Attention" in type(module).__name__


def transformer_blocks(model: nn.Module) -> list[str]:
    """Names of the model's transformer blocks, in order: for each attention module, its nearest ancestor that is an item
    of a ModuleList or Sequential (transformers' `vit.layers.3`, timm's `blocks.3`, torchvision's `encoder.layers.encoder_layer_3`)."""
    modules = dict(model.named_modules())
    blocks: dict[str, None] = {}
    for name, m in modules.items():
        if not name or not _is_attention(m):
            continue
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            if isinstance(modules.get(".".join(parts[:i])), (nn.ModuleList, nn.Sequential)):
                blocks[".".join(parts[:i + 1])] = None
                break
    return [b for b in blocks if not any(b.startswith(o + ".") for o in blocks)]  # outermost only


def attention_layers(model: nn.Module, capable: Optional[list[str]] = None) -> list[str]:
    """Adaptable layers inside an attention module: the query/key/value and output projections (timm: qkv, proj)."""
    capable = lora_capable_layers(model) if capable is None else capable
    inside = [name for name, m in model.named_modules() if name and _is_attention(m)]
    return [n for n in capable if any(n.startswith(a + ".") for a in inside)]


def family(model: nn.Module) -> str:
    """'transformer' (attention blocks), 'conv' (Conv2d layers) or 'mlp': what `auto` targets depend on."""
    if transformer_blocks(model):
        return "transformer"
    return "conv" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "mlp"


# The measured default of each family (docs/rfa.md, "Which layers to adapt"); a spec that selects nothing falls back to 'all'.
# transformer: attention projections only, the one selection on the pre-trained ViT (benchmarks/pretrained_digits.py) that
# forgot on every seed in both scenarios, with the lowest sample-unlearning Avg Gap of the selections (class: within noise).
# conv, mlp: every layer (what `auto` means in select_layers; RFA's own auto on them is lora.auto_layers, docs/rfa.md row 1).
DEFAULT_TARGETS: dict[str, Union[str, list[str]]] = {"transformer": "attention", "conv": "all", "mlp": "all"}


def default_targets(model: nn.Module) -> Union[str, list[str]]:
    """The target_layers spec `auto` stands for on this model."""
    return DEFAULT_TARGETS[family(model)]


def _select_one(model: nn.Module, capable: list[str], spec: str) -> list[str]:
    if spec == "all":
        return capable
    if spec == "head":
        return capable[-1:]
    if spec == "auto":
        try:
            return select_layers(model, default_targets(model))
        except MethodError:  # e.g. attention projections owned by nn.MultiheadAttention, which LoRA cannot adapt
            return capable
    if spec == "attention":
        return attention_layers(model, capable)
    m = re.fullmatch(r"(last|blocks):(\d+)", spec)
    if m and m.group(1) == "last":
        return capable[-int(m.group(2)):] if int(m.group(2)) >= 1 else []
    if spec == "mlp" or m:
        blocks = transformer_blocks(model)
        if m:
            blocks = blocks[-int(m.group(2)):] if int(m.group(2)) >= 1 else []
        attention = set(attention_layers(model, capable)) if spec == "mlp" else set()
        return [n for n in capable if n not in attention and any(n.startswith(b + ".") for b in blocks)]
    return [n for n in capable if n == spec or re.fullmatch(spec, n)]


def capable_or_refuse(model: nn.Module) -> list[str]:
    """lora_capable_layers, or the named refusal when there is none (it read "internal: ... please report this")."""
    capable = lora_capable_layers(model)
    if not capable and isinstance(model, torch.jit.ScriptModule):
        raise MethodError("the model is scripted (torch.jit), whose layers LoRA cannot adapt; give the unscripted module, or use a "
                          "method that edits weights directly (finetune, ssd, ...)")
    if not capable:
        raise MethodError("the model has no Linear or Conv2d layer that LoRA can adapt (a layer called under two names is not "
                          "adapted); use a method that edits weights directly")
    return capable


def select_layers(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Resolve a target spec, a keyword (KEYWORDS, 'last:N', 'blocks:N') or layer names/regexes, or a list of them
    (their union), to adaptable layer names in model order."""
    capable = capable_or_refuse(model)
    specs = [targets] if isinstance(targets, str) else list(targets)
    for t in specs:
        if re.fullmatch(r"(last|blocks):\d+", t) and int(t.split(":")[1]) < 1:
            raise MethodError(f"target_layers '{t}': N must be at least 1")
    picked = {n for t in specs for n in _select_one(model, capable, t)}
    chosen = [n for n in capable if n in picked]
    if not chosen:
        what = " (the model has no transformer blocks)" if any(t in ("attention", "mlp") or t.startswith("blocks:") for t in specs) else ""
        raise MethodError(f"target_layers {specs if len(specs) > 1 else specs[0]!r} match no adaptable layer{what}; adaptable layers are: "
                          f"{', '.join(capable[:12])}{' ...' if len(capable) > 12 else ''}")
    return chosen


class LoraLayer(nn.Module):
    """A Linear or (non-grouped, non-dilated) Conv2d with a LoRA bypass: y = W x + s * B(A(x)), s = alpha / r.

    The same layer, parameter shapes, initialisation and names (base_layer, lora_A, lora_B) as peft's LoRA layer, so
    `to_peft` can hand the adapters to peft for its adapter format. Our own rather than peft's because importing peft
    imports transformers (about 4 s, most of a small `unlearn apply`; docs/rfa.md, "Speed: what was tried"), and RFA
    needs two things peft's layer does not give: the fused one-op forward and the residual of chosen rows.
    `state` is shared by every layer of one adapted model (see AdapterState).
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, state: "AdapterState") -> None:
        super().__init__()
        self.base_layer, self.rank, self.alpha, self.scaling = base, rank, alpha, alpha / rank
        self.conv = isinstance(base, nn.Conv2d)
        if self.conv:
            self.lora_A = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False,
                                    padding_mode=base.padding_mode)
            self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            self.lora_A = nn.Linear(base.in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        self.lora_A.to(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_B.to(device=base.weight.device, dtype=base.weight.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's default: A as nn.Linear's init, B = 0
        nn.init.zeros_(self.lora_B.weight)
        self._state = [state]  # a list, so that the shared state is not registered as a submodule
        self.path = ""  # the layer's name in the adapted model (residuals are recorded under it)

    @property
    def state(self) -> "AdapterState":
        return self._state[0]

    def __getattr__(self, name: str):
        """Anything else (weight, bias, in_features, kernel_size, ...) is the wrapped layer's, as with peft's layers: model
        code reads such attributes of its own layers (a Hugging Face ViT reads its patch projection's weight dtype)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def delta_weight(self) -> torch.Tensor:
        """s * B A shaped like the base weight: what merging adds (for a k x k convolution, B's 1 x 1 kernel times A's)."""
        base = self.base_layer.weight
        return (self.lora_B.weight.flatten(1) @ self.lora_A.weight.flatten(1)).view_as(base) * self.scaling

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The bypass branch's output s * B(A(x)): the residual feature RFA drives to zero on retained data."""
        return self.lora_B(self.lora_A(x)) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state, base = self.state, self.base_layer
        if state.disabled:
            return base(x)
        if not state.fused:  # two branches, as peft computes it (forward hooks on lora_A / lora_B see the bypass)
            return base(x) + self.residual(x)
        delta = self.delta_weight()
        weight = base.weight + delta
        out = base._conv_forward(x, weight, base.bias) if self.conv else nn.functional.linear(x, weight, base.bias)
        if state.rows is not None:  # s * B(A(x)) in one op with the delta weight this pass already built
            rows = x[state.rows]
            state.residuals[self.path] = base._conv_forward(rows, delta, None) if self.conv else nn.functional.linear(rows, delta)
        return out


class AdapterState:
    """Switches shared by the LoRA layers of one adapted model. `fused`: each layer computes its output in one op with
    the effective weight W + s * B A (fused_adapters); `rows`: a slice of the batch whose residual features are then
    recorded in `residuals` (layer name -> tensor) on the next forward pass; `disabled`: the frozen layers alone (the
    original model's function)."""

    def __init__(self) -> None:
        self.fused = False
        self.rows: Optional[slice] = None
        self.residuals: dict[str, torch.Tensor] = {}
        self.disabled = False

    def __deepcopy__(self, memo: dict) -> "AdapterState":
        """A copied model gets fresh switches (shared by its own layers), not this one's recorded residuals, which
        are non-leaf tensors of a training graph (deepcopy refuses those)."""
        return AdapterState()


def inject(model: nn.Module, layers: list[str], rank: int, alpha: float) -> nn.Module:
    """A copy of `model` whose named `layers` carry LoRA adapters (B = 0, so outputs are unchanged); the rest is frozen."""
    adapted = copy.deepcopy(model).requires_grad_(False)
    state = AdapterState()
    for name in layers:
        parent, _, child = name.rpartition(".")
        holder = adapted.get_submodule(parent) if parent else adapted
        layer = LoraLayer(getattr(holder, child), rank, alpha, state)
        setattr(holder, child, layer)
        layer.path = name
    return adapted


def adapter_state(model: nn.Module) -> AdapterState:
    layers = lora_layers(model)
    if not layers:
        raise MethodError("internal: the model carries no LoRA adapters; please report this")
    return layers[0][1].state


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads transformers models' deprecated `is_gradient_checkpointing` (a FutureWarning on every wrap): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # missing or unexpected adapter keys: AdapterArtifact.load compares the keys itself and refuses in one line
        warnings.filterwarnings("ignore", message="Found (missing|unexpected) adapter keys", category=UserWarning)
        yield


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


@contextmanager
def capture_residuals(model: nn.Module, layers: Optional[list[tuple[str, LoraLayer]]] = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record each adapted layer's residual feature, scaling * B(A(x)), during (unfused) forward passes.

    `layers` (from lora_layers) saves walking the module tree on every call in a training loop.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in (layers if layers is not None else lora_layers(model)):
        def hook(_m, _inp, out, name=name, scaling=layer.scaling):
            store[name] = out * scaling

        handles.append(layer.lora_B.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_outputs(model: nn.Module, layers: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers of a plain model."""
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: store.__setitem__(n, out)) for n in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def fused_adapters(model: nn.Module, layers: Optional[list[tuple[str, LoraLayer]]] = None) -> Iterator[AdapterState]:
    """Inside the block, each adapted Linear / Conv2d computes its output in one op with the effective weight
    W + s * B A: the function of the two branches (W x + s * B(A x)), same values up to rounding, at the cost of the
    plain layer. On small convolutions the extra branch costs about as much as the layer itself (it reads the same
    input), so this halves a training step there. The residual features of chosen rows are still available
    (AdapterState.rows / .residuals)."""
    state = (layers[0][1].state if layers else None) or adapter_state(model)
    state.fused = True
    try:
        yield state
    finally:
        state.fused, state.rows, state.disabled, state.residuals = False, None, False, {}


class PrefixSplit(NamedTuple):
    """A model cut at a single tensor in front of its adapted layers: `suffix(prefix(x)) == model(x)`."""

    prefix: nn.Module  # x -> boundary tensor; holds no adapted layer, so it is frozen
    suffix: nn.Module  # boundary tensor -> output; holds every adapted layer
    boundary: str  # the boundary's node name in the traced graph (for messages)


def _trace(model: nn.Module, leaves: set[str]):
    """(graph module, nodes in execution order) of `model` traced by torch.fx with `leaves` kept as leaf modules;
    None when the model does not trace or does not take exactly one input."""
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname in leaves or super().is_leaf_module(m, qualname)

    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception:  # noqa: BLE001 - any tracing failure means: no cut, run the whole model
        return None
    gm.graph.eliminate_dead_code()
    nodes = list(gm.graph.nodes)
    if sum(n.op == "placeholder" for n in nodes) != 1:
        return None
    return gm, nodes


def _single_tensor_cuts(nodes) -> list[int]:
    """Positions i in execution order after which only node i's value (and input-independent constants)
    is used later: the model can be cut there into prefix(x) -> one tensor -> suffix."""
    pos = {n: i for i, n in enumerate(nodes)}
    source = nodes[0] if nodes[0].op == "placeholder" else next(n for n in nodes if n.op == "placeholder")
    on_input = {source}
    for n in nodes:
        if any(a in on_input for a in n.all_input_nodes):
            on_input.add(n)
    last_use = {n: max((pos[u] for u in n.users), default=pos[n]) for n in nodes}
    cuts, live = [], set()
    for i, n in enumerate(nodes):
        if n.op == "output":
            break
        if n in on_input:
            live.add(n)
        live = {m for m in live if last_use[m] > i}
        if live == {n} and n is not source:
            cuts.append(i)
    return cuts


def split_frozen_prefix(model: nn.Module, adapted: Sequence[str], probe: torch.Tensor) -> Optional[PrefixSplit]:
    """Cut `model` (whose submodules named in `adapted` carry the adapters) into a frozen prefix and a suffix.

    The boundary is the latest single tensor, in execution order, that everything after it depends on and
    that comes before every adapted layer (found on the torch.fx graph, adapted layers kept as leaves so
    their patched forwards still run). The prefix's output can then be computed once per sample and cached.
    Returns None when there is nothing to gain (the first operation is adapted) or when the model cannot be
    cut safely: it does not trace, has several inputs, or the two halves do not reproduce the model's output
    on `probe` (a small input batch). Submodules are shared with `model`, not copied.
    """
    import torch.fx as fx

    names = set(adapted)
    traced = _trace(model, names)
    if traced is None:
        return None
    _, nodes = traced
    first = min((i for i, n in enumerate(nodes) if n.op == "call_module" and n.target in names), default=None)
    cuts = [i for i in _single_tensor_cuts(nodes) if first is not None and i < first]
    if not cuts:
        return None
    cut = nodes[cuts[-1]]
    on_input = set(nodes[:cuts[-1] + 1]) & {n for n in nodes if _depends_on_input(n, nodes[0])}
    output = nodes[-1]

    def cut_module(keep, head: bool) -> fx.GraphModule:
        g, env = fx.Graph(), {}
        if head:
            env[cut] = g.placeholder("boundary")
        for n in nodes:
            if n.op == "output" or n in env or not keep(n):
                continue
            env[n] = g.node_copy(n, lambda a: env[a])
        g.output(fx.node.map_arg(output.args[0], lambda a: env[a]) if head else env[cut])
        gm = fx.GraphModule(model, g)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        return gm

    index = {n: i for i, n in enumerate(nodes)}
    try:
        prefix = cut_module(lambda n: index[n] <= cuts[-1], head=False)
        suffix = cut_module(lambda n: n not in on_input, head=True)
        with torch.no_grad():
            z = prefix(probe)
            ok = (isinstance(z, torch.Tensor) and z.shape[:1] == probe.shape[:1]
                  and torch.allclose(suffix(z), model(probe), rtol=1e-4, atol=1e-5))
    except Exception:  # noqa: BLE001 - a cut that does not run is no cut
        ok = False
    return PrefixSplit(prefix, suffix, cut.name) if ok else None


def _depends_on_input(node, source) -> bool:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is source:
            return True
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return False


def auto_layers(model: nn.Module, probe: torch.Tensor, min_prefix_share: float = 0.5, min_layers: int = 2) -> list[str]:
    """The adaptable layers after the earliest single-tensor cut whose frozen prefix holds at least
    `min_prefix_share` of the forward multiply-accumulates of the adaptable layers (Linear / Conv2d), if that
    suffix keeps at least `min_layers` of them; otherwise every adaptable layer (no cut pays off)."""
    capable = capable_or_refuse(model)
    macs: dict[str, float] = {}  # in execution order
    modules = dict(model.named_modules())

    def hook(name):
        def record(m, inputs, out):
            per_out = m.in_features if isinstance(m, nn.Linear) else (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            macs.setdefault(name, out[0].numel() * per_out)
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in capable]
    try:
        with torch.no_grad():
            model(probe[:1])
    finally:
        for h in handles:
            h.remove()
    total, running, possible = sum(macs.values()), 0.0, False
    for i, c in enumerate(macs.values()):  # a cut can only pay off after enough work and before enough layers
        running += c
        possible |= running >= min_prefix_share * total and len(macs) - i - 1 >= min_layers
    if not total or not possible:
        return capable
    traced = _trace(model, set(capable))
    if traced is None:
        return capable
    _, nodes = traced
    position = {n.target: i for i, n in enumerate(nodes) if n.op == "call_module" and n.target in macs}
    for cut in _single_tensor_cuts(nodes):
        before = sum(c for name, c in macs.items() if position.get(name, len(nodes)) <= cut)
        after = [name for name in capable if position.get(name, -1) > cut]
        if before >= min_prefix_share * total:
            return after if len(after) >= min_layers else capable
    return capable


def merged_copy(model: nn.Module, base: Optional[nn.Module] = None) -> nn.Module:
    """The plain architecture with the adapters folded into the weights (W + s * B A); the adapted model is left as it is.

    With `base` (the unadapted model the adapters were injected into, e.g. the original), that plain model is copied
    and each delta weight added to the copy (cheaper than copying the adapted model); otherwise the adapted model is
    copied and each LoRA layer replaced by its merged base layer.
    """
    if base is None:
        return _unwrapped(model, merge=True)
    merged = copy.deepcopy(base)  # trainable as the base was: a later method may train it
    for name, layer in lora_layers(model):
        target = merged.get_submodule(name)
        with torch.no_grad():
            target.weight += merge_delta(layer)
    return merged


def merge_delta(layer: LoraLayer) -> torch.Tensor:
    """The delta a merge folds in, computed in the weights' own precision. A method merges inside its training pass's
    autocast context (bf16 on a card), where the B @ A product would come out bf16-rounded: the merged checkpoint then
    differed from its own adapter (logits by 4e-3 on digits: tests/test_precision.py)."""
    weight = layer.base_layer.weight
    with full_precision(weight.device):
        return layer.delta_weight().to(weight.dtype)


def unadapted_copy(model: nn.Module) -> nn.Module:
    """A copy of the adapted model with each LoRA layer replaced by its frozen base layer: the model before injection."""
    return _unwrapped(model, merge=False)


def _unwrapped(model: nn.Module, merge: bool) -> nn.Module:
    """A copy of the adapted model with each LoRA layer replaced by its base layer, the delta added first if `merge`."""
    plain = copy.deepcopy(model).requires_grad_(False)
    for name, layer in lora_layers(plain):
        if merge:
            with torch.no_grad():
                layer.base_layer.weight += merge_delta(layer)
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, child, layer.base_layer)
    return plain


def to_peft(model: nn.Module):
    """The same adapters as a peft PeftModel (on a copy of the unadapted model), for peft's adapter format
    (save_pretrained). peft is imported here only: writing an adapter-only output is the one place that needs it."""
    from peft import LoraConfig, get_peft_model

    layers = lora_layers(model)
    if not layers:
        raise MethodError("internal: the model carries no LoRA adapters; please report this")
    (rank, alpha) = {(layer.rank, layer.alpha) for _, layer in layers}.pop()
    pattern = "^(" + "|".join(re.escape(n) for n, _ in layers) + ")$"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern, bias="none")
    with quiet_peft():
        peft_model = get_peft_model(unadapted_copy(model).cpu(), config)
    modules = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in layers:
            target = modules[name]
            target.lora_A[ADAPTER_NAME].weight.copy_(layer.lora_A.weight)
            target.lora_B[ADAPTER_NAME].weight.copy_(layer.lora_B.weight)
    return peft_model


def adapter_parameters(peft_model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in peft_model.named_parameters() if "lora_" in n]
