"""`unlearn`: the command-line entry point. Thin: parse options, call the library, print.

Nothing here imports torch at module level, so `unlearn --help` answers instantly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import CodePathOpt, DeviceOpt, RequestOpt, TrustCodeOpt, app, code_policy
from .common import err, handle_errors, markup_safe, plain, print_json, progress_bars


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}%"


def _print_before_after(before: dict, after: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=markup_safe(title))
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in before:
        table.add_row(key, _fmt(before[key]), _fmt(after.get(key)))
    Console(stderr=True).print(table)


@app.command()
@handle_errors
def apply(
    checkpoint: Path = typer.Argument(..., help="Trained model (.safetensors)."),
    request: Path = RequestOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output path (default <stem>.unlearned.safetensors beside the input)."),
    adapter_only: Optional[bool] = typer.Option(None, "--adapter-only/--merged", help="Write a PEFT adapter folder (LoRA methods) or merged weights; default: the request's output.mode.", show_default=False),
    method: Optional[str] = typer.Option(None, "--method", help="Override the request's method.name."),
    param: list[str] = typer.Option([], "--param", help="Method parameter k=v (repeatable); overrides the request's."),
    device: str = DeviceOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the request's seed."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output (only a checkpoint, or an adapter folder this tool wrote)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    audit: bool = typer.Option(False, "--audit", help="Audit the result right away (request's audit.gates and audit.reference); exit 3 if a gate fails."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="With --audit: where to write the reports (default <output stem>.audit/)."),
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Make the model forget what the request names and write the unlearned checkpoint."""
    from unlearn_tool.pipeline import apply as run_apply, check_seed, plan_apply, prepare
    from unlearn_tool.request import load_request, parse_key_values

    req = load_request(request)
    if seed is not None:
        check_seed(seed)
    # Every input error (method, parameters, output, gates, reference) fails here, before data or models load.
    plan = plan_apply(req, checkpoint, method=method, params=parse_key_values(param), output=output,
                      adapter_only=adapter_only, force=force, audit=audit)
    job = prepare(req, checkpoint, device=device, seed=seed, code=code_policy(code_path, trust_code))
    reference_model = None
    if plan.audit and plan.reference is not None:
        from unlearn_tool.audit import load_checkpoint

        reference_model = load_checkpoint(plan.reference, job)  # a reference that does not fit fails before unlearning
    with progress_bars(not quiet and not as_json) as progress:
        result = run_apply(job, plan, progress=progress)
    summary = result.as_dict(job)
    for w in result.warnings:
        err(f"warning: {w}")
    report = None
    if plan.audit:
        from unlearn_tool.audit import audit_apply_result

        report, folder = audit_apply_result(job, result, report_dir, plan.gates, reference_model)
        summary["audit"] = {"report_dir": str(folder), "verdict": report["verdict"], "gates": report["gates"], "warnings": report["warnings"]}
    if as_json:
        print_json(summary)
    elif not quiet:
        _print_before_after(result.before, result.after, f"{result.method} on request {req.id}")
        err(f"wrote {result.output} ({result.mode}) in {result.wall_time_s:.2f}s of unlearning")
    if report is not None:
        from .audit import finish

        finish(report, folder, as_json=False, quiet=as_json or quiet)  # stdout already holds the apply summary


@app.command()
@handle_errors
def validate(
    request: Path = RequestOpt,
    checkpoint: Optional[Path] = typer.Argument(None, help="Optional checkpoint to check against the architecture."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Check a request (schema, method parameters, data, classes/indices, checkpoint) without training."""
    from unlearn_tool.request import load_request

    req = load_request(request)  # schema first: no torch needed to reject a malformed request
    from unlearn_tool.methods import parse_params as check_params
    from unlearn_tool.pipeline import prepare

    check_params(req.method.name, req.method.params)
    job = prepare(req, checkpoint, device="cpu", code=code_policy(code_path, trust_code))
    info = {
        "request_id": req.id,
        "ok": True,
        "scenario": job.splits.scenario,
        "num_classes": job.num_classes,
        "train_size": len(job.splits.train),
        "test_size": len(job.splits.test),
        "forget_size": len(job.splits.forget_idx),
        "retain_size": len(job.splits.retain_idx),
        "method": req.method.name,
        "checkpoint": str(checkpoint) if checkpoint else None,
    }
    if as_json:
        print_json(info)
    else:
        typer.echo(plain(
            f"ok: request {req.id}: {info['scenario']} unlearning of {info['forget_size']} of {info['train_size']} train samples "
            f"({job.num_classes} classes), method {req.method.name}" + (f", checkpoint matches {req.model.arch}" if checkpoint else "")
        ))


@app.command()
@handle_errors
def inspect(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List a checkpoint's tensors, shapes, dtypes, parameter count and metadata."""
    from unlearn_tool.checkpoint import read_checkpoint, read_metadata_fields

    tensors, metadata = read_checkpoint(checkpoint)
    rows = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "numel": v.numel()} for k, v in tensors.items()]
    total = sum(r["numel"] for r in rows)
    if as_json:
        print_json({"path": str(checkpoint), "tensors": rows, "parameters": total, "metadata": read_metadata_fields(metadata), "raw_metadata": metadata})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=markup_safe(f"{checkpoint} — {len(rows)} tensors, {total:,} values"))
    for col in ("name", "shape", "dtype"):
        table.add_column(col)
    table.add_column("values", justify="right")
    for r in rows:
        table.add_row(markup_safe(r["name"]), "x".join(map(str, r["shape"])) or "scalar", r["dtype"], f"{r['numel']:,}")
    console = Console()
    console.print(table)
    for k, v in sorted(metadata.items()):
        console.print(f"[bold]{markup_safe(k)}[/bold]: {markup_safe(v)}", highlight=False)


@app.command()
@handle_errors
def train(
    request: Path = RequestOpt,
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the trained checkpoint (.safetensors)."),
    exclude_forget: bool = typer.Option(False, "--exclude-forget", help="Train without the forget set: the retrain-from-scratch reference."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the data (default 40)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 1e-3)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam (default) or sgd."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size (default 64)."),
    device: str = DeviceOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the request's seed."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output (only a checkpoint)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Train the request's architecture on its train split (optionally without the forget set)."""
    from unlearn_tool.checkpoint import check_output
    from unlearn_tool.pipeline import check_seed, prepare, train_checkpoint
    from unlearn_tool.request import load_request
    from unlearn_tool.training import train_config

    config = train_config(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size)
    req = load_request(request)
    if seed is not None:
        check_seed(seed)
    check_output(output, "file", force, protect={"request": req.path})
    job = prepare(req, None, device=device, seed=seed, code=code_policy(code_path, trust_code))
    with progress_bars(not quiet and not as_json) as progress:
        summary = train_checkpoint(job, output, config, exclude_forget=exclude_forget, force=force, progress=progress)
    if as_json:
        print_json(summary)
    elif not quiet:
        err(f"wrote {output}: test accuracy {_fmt(summary['test_acc'])}, {summary['train_size']} training samples, {summary['wall_time_s']:.1f}s")


@app.command()
@handle_errors
def methods(name: Optional[str] = typer.Argument(None, help="A method name, to list its parameters."),
            as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the registered unlearning methods, or one method's parameters."""
    from unlearn_tool.methods import get_method, method_names

    if name is None:
        entries = [get_method(n) for n in method_names()]
        if as_json:
            print_json([{"name": e.name, "summary": e.summary, "adapter": e.supports_adapter} for e in entries])
            return
        width = max(len(e.name) for e in entries)
        for e in entries:
            typer.echo(f"{e.name:<{width}}  {e.summary}")
        return
    entry = get_method(name)
    fields = [
        {"name": k, "default": f.default if f.default is not None else None, "type": _type_name(f.annotation), "description": f.description or ""}
        for k, f in entry.params_cls.model_fields.items()
    ]
    if as_json:
        print_json({"name": entry.name, "summary": entry.summary, "reference": entry.reference, "adapter": entry.supports_adapter, "params": fields})
        return
    typer.echo(f"{entry.name}: {entry.summary}")
    if entry.reference:
        typer.echo(f"reference: {entry.reference}")
    for f in fields:
        typer.echo(f"  {f['name']} ({f['type']}, default {f['default']!r}): {f['description']}")


@app.command()
@handle_errors
def quickstart(
    folder: Path = typer.Option(Path("unlearn-quickstart"), "--dir", help="Working folder for the demo files."),
    device: str = DeviceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the apply summary as JSON."),
) -> None:
    """The built-in default, no download: train a small MLP on digits (once), forget digit 3 with RFA, print before/after."""
    from unlearn_tool.quickstart import run_quickstart

    with progress_bars(not as_json) as progress:
        summary = run_quickstart(folder, device=device, progress=progress)
    if as_json:
        print_json(summary)
        return
    _print_before_after(summary["before"], summary["after"], "RFA-LoRA: forget digit 3 (scikit-learn digits, MLP)")
    err(f"original: {folder / 'digits_mlp.safetensors'}{' (trained now)' if summary['trained_original'] else ''}")
    err(f"unlearned: {summary['output']} in {summary['wall_time_s']:.2f}s; next: unlearn audit --help")


def _type_name(annotation: object) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


from . import audit as _audit  # noqa: E402,F401  (registers the command)
from . import bench as _bench  # noqa: E402,F401  (registers the command)

if __name__ == "__main__":  # pragma: no cover
    app()
