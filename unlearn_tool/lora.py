"""LoRA plumbing through peft: choose layers, inject adapters, read the residual (bypass) branch, merge.

peft's LoRA layer computes  y = W x + scaling * B(A(x)): `W x` is the frozen
pre-trained feature, `scaling * B(A(x))` the residual feature that RFA trains.
"""

from __future__ import annotations

import copy
import re
import warnings
from contextlib import contextmanager
from typing import Annotated, Iterator, NamedTuple, Optional, Sequence, Union

import torch
from pydantic import AfterValidator
from torch import nn

from .errors import MethodError

ADAPTER_NAME = "default"


def lora_capable_layers(model: nn.Module) -> list[str]:
    """Linear and (non-grouped) Conv2d layers whose weight the forward pass really uses.

    Excluded: grouped/depthwise and dilated convolutions (peft cannot adapt the former; its LoRA branch of the
    latter drops the dilation, so its output no longer matches the layer's), and projections owned by
    nn.MultiheadAttention (it reads their weights directly, so an adapter there would be silently ignored).
    """
    owned_by_mha = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            owned_by_mha.update(f"{name}.{child}" if name else child for child, _ in m.named_children())
    names = []
    for name, m in model.named_modules():
        if not name or name in owned_by_mha:
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


def select_layers(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Resolve a target spec, a keyword (KEYWORDS, 'last:N', 'blocks:N') or layer names/regexes, or a list of them
    (their union), to adaptable layer names in model order."""
    capable = lora_capable_layers(model)
    if not capable:
        raise MethodError("the model has no Linear or Conv2d layer that LoRA can adapt; use a method that edits weights directly")
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


def inject(model: nn.Module, layers: list[str], rank: int, alpha: float):
    """A PeftModel wrapping a copy of `model` with LoRA on exactly `layers` (B = 0, so outputs are unchanged)."""
    from peft import LoraConfig, get_peft_model

    pattern = "^(" + "|".join(re.escape(n) for n in layers) + ")$"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern, bias="none")
    with quiet_peft():
        return get_peft_model(copy.deepcopy(model), config)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads transformers models' deprecated `is_gradient_checkpointing` (a FutureWarning on every wrap): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def lora_layers(peft_model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


@contextmanager
def capture_residuals(peft_model: nn.Module, layers: Optional[list[tuple[str, nn.Module]]] = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record each adapted layer's residual feature, scaling * B(A(x)), during forward passes.

    `layers` (from lora_layers) saves walking the module tree on every call in a training loop.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in (layers if layers is not None else lora_layers(peft_model)):
        scaling = layer.scaling[ADAPTER_NAME]

        def hook(_m, _inp, out, name=name, scaling=scaling):
            store[name] = out * scaling

        handles.append(layer.lora_B[ADAPTER_NAME].register_forward_hook(hook))
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


class FusedAdapters:
    """What `fused_adapters` yields: set `rows` (a slice of the batch) to have those rows' residual features
    s * B(A x) recorded in `residuals` (layer name -> tensor) on the next forward pass; set `disabled` to run
    the frozen layers alone (the original model's function). `unfused` lists the adapted layers left to peft's
    own forward (neither `rows` nor `disabled` reaches them)."""

    def __init__(self) -> None:
        self.rows: Optional[slice] = None
        self.residuals: dict[str, torch.Tensor] = {}
        self.disabled = False
        self.unfused: list[str] = []


def _fused_forward(layer: nn.Module, name: str, state: FusedAdapters):
    """A forward computing  base(x; W + s * B A)  in one op, or None where this layer is not plain LoRA on a
    Linear / non-grouped Conv2d (peft's own forward then stays)."""
    base = layer.get_base_layer()
    plain = (list(getattr(layer, "active_adapters", [])) == [ADAPTER_NAME] and not layer.merged and not layer.disable_adapters
             and not getattr(layer, "use_dora", {}).get(ADAPTER_NAME, False)
             and isinstance(layer.lora_dropout[ADAPTER_NAME], nn.Identity))
    # peft's A branch of a Conv2d copies kernel, stride and padding but not dilation or padding_mode: keep its forward there
    conv = isinstance(base, nn.Conv2d) and base.groups == 1 and base.dilation == (1, 1) and base.padding_mode == "zeros"
    if not plain or not (conv or type(base) is nn.Linear):
        return None
    lora_a, lora_b, scaling = layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME], layer.scaling[ADAPTER_NAME]

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if state.disabled:
            return base(x)
        delta = (lora_b.weight.flatten(1) @ lora_a.weight.flatten(1)).view_as(base.weight) * scaling
        weight = base.weight + delta
        out = base._conv_forward(x, weight, base.bias) if conv else nn.functional.linear(x, weight, base.bias)
        if state.rows is not None:
            state.residuals[name] = lora_b(lora_a(x[state.rows])) * scaling
        return out

    return forward


@contextmanager
def fused_adapters(peft_model: nn.Module, layers: Optional[list[tuple[str, nn.Module]]] = None) -> Iterator[FusedAdapters]:
    """Inside the block, each adapted Linear / Conv2d computes its output in one op with the effective weight
    W + s * B A: the function peft computes in two branches (W x + s * B(A x)), same values up to rounding,
    at the cost of the plain layer. On small convolutions the extra branch costs about as much as the layer
    itself (it reads the same input), so this halves a training step there. The residual features of chosen
    rows are still available (FusedAdapters.rows / .residuals).
    """
    state = FusedAdapters()
    patched = []
    for name, layer in (layers if layers is not None else lora_layers(peft_model)):
        forward = _fused_forward(layer, name, state)
        if forward is not None:
            layer.forward = forward  # an instance attribute shadows the class's forward
            patched.append(layer)
        else:
            state.unfused.append(name)
    try:
        yield state
    finally:
        for layer in patched:
            del layer.forward


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
    capable = lora_capable_layers(model)
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


def merged_copy(peft_model: nn.Module, base: Optional[nn.Module] = None) -> nn.Module:
    """The plain architecture with adapters folded into the weights (the PeftModel is left as it is).

    With `base` (the unadapted model the adapters were injected into, e.g. the original), that plain model is
    copied and each adapter's delta weight (peft's get_delta_weight, which its own merge adds) is added to the
    copy: the same weights, without deep-copying the PeftModel (which costs more than the rest of a small run).
    """
    if base is None:
        return copy.deepcopy(peft_model).merge_and_unload()
    merged = copy.deepcopy(base).requires_grad_(False)
    for name, layer in lora_layers(peft_model):
        target = merged.get_submodule(name.removeprefix("base_model.model."))
        with torch.no_grad():
            target.weight += layer.get_delta_weight(ADAPTER_NAME).to(target.weight.dtype)
    return merged


def adapter_parameters(peft_model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in peft_model.named_parameters() if "lora_" in n]
