"""`unlearn`: the command-line entry point. Thin: each command parses its options, calls one library function, prints.

Nothing here imports torch at module level, so `unlearn --help` answers instantly. The audit and
bench commands live in cli/audit.py and cli/bench.py and register on the same app (cli/app.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .app import CodePathOpt, DeviceOpt, NumWorkersOpt, RequestOpt, TrustCodeOpt, app, code_policy
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
    checkpoint: Path = typer.Argument(..., help="Trained model (.safetensors, or a save_pretrained folder for hf:<folder> models)."),
    request: Path = RequestOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output path (default <stem>.unlearned.safetensors beside the input; <folder>.unlearned/ for a save_pretrained folder)."),
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
    summary_samples: int = typer.Option(1000, "--summary-samples", min=0, help="Retain and test samples the before/after summary evaluates (seeded; the forget set is always whole; 0: every sample). The audit evaluates everything."),
    num_workers: int = NumWorkersOpt,
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Make the model forget what the request names and write the unlearned checkpoint."""
    from unlearn_tool import commands
    from unlearn_tool.request import parse_key_values

    params = parse_key_values(param)
    with progress_bars(not quiet and not as_json) as progress:
        outcome = commands.apply(request, checkpoint, method=method, params=params, output=output, adapter_only=adapter_only,
                                force=force, device=device, seed=seed, code=code_policy(code_path, trust_code),
                                audit=audit, report_dir=report_dir, progress=progress, summary_samples=summary_samples or None,
                                num_workers=num_workers)
    result = outcome.result
    for w in result.warnings:
        err(f"warning: {w}")
    if as_json:
        print_json(outcome.summary())
    elif not quiet:
        _print_before_after(result.before, result.after, f"{result.method} on request {outcome.job.request.id}")
        err(f"wrote {result.output} ({result.mode}) in {result.wall_time_s:.2f}s of unlearning")
    if outcome.report is not None:
        from .audit import finish

        finish(outcome.report, outcome.report_dir, as_json=False, quiet=as_json or quiet)  # stdout already holds the apply summary


@app.command()
def validate(
    request: Path = RequestOpt,
    checkpoint: Optional[Path] = typer.Argument(None, help="Optional checkpoint to check against the architecture."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON (also when they fail: {\"ok\": false, \"error\": ...})."),
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Check a request (schema, method parameters, data, classes/indices, checkpoint) without training."""

    def run() -> dict[str, Any]:
        from unlearn_tool import commands

        return commands.validate(request, checkpoint, code=code_policy(code_path, trust_code))

    if as_json:  # a failing check is a JSON answer too, so pipelines can parse stdout either way
        try:
            info = handle_errors(run)()
        except typer.Exit as e:
            print_json({"ok": False, "exit_code": e.exit_code, "error": _last_error()})
            raise
        print_json(info)
        return
    info = handle_errors(run)()
    typer.echo(plain(
        f"ok: request {info['request_id']}: {info['scenario']} unlearning of {info['forget_size']} of {info['train_size']} train samples "
        f"({info['num_classes']} classes), method {info['method']}" + (f", checkpoint matches {info['checkpoint_matches']}" if checkpoint else "")
    ))


def _last_error() -> Optional[str]:
    from .common import LAST_ERROR

    return LAST_ERROR[-1] if LAST_ERROR else None


@app.command()
@handle_errors
def inspect(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint or an adapter folder."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List a checkpoint's tensors, shapes, dtypes, parameter count and metadata."""
    from unlearn_tool.artifacts import open_artifact

    info = open_artifact(checkpoint).describe()
    if as_json:
        print_json(info)
        return
    from rich.console import Console
    from rich.table import Table

    rows = info["tensors"]
    table = Table(title=markup_safe(f"{checkpoint} ({info['kind']}) — {len(rows)} tensors, {info['parameters']:,} values"))
    for col in ("name", "shape", "dtype"):
        table.add_column(col)
    table.add_column("values", justify="right")
    for r in rows:
        table.add_row(markup_safe(r["name"]), "x".join(map(str, r["shape"])) or "scalar", r["dtype"], f"{r['numel']:,}")
    console = Console()
    console.print(table)
    for k, v in sorted(info["raw_metadata"].items()):
        console.print(f"[bold]{markup_safe(k)}[/bold]: {markup_safe(v)}", highlight=False)


@app.command()
@handle_errors
def train(
    request: Path = RequestOpt,
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the trained checkpoint (.safetensors; for hf:<folder> models any other name is a save_pretrained folder)."),
    exclude_forget: bool = typer.Option(False, "--exclude-forget", help="Train without the forget set: the retrain reference (from scratch, or from --init)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this pre-trained checkpoint of the same architecture (tensors whose shape differs, e.g. a new head, start fresh): fine-tuning."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the data (default 40)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 1e-3)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam (default) or sgd."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size (default 64)."),
    regularizer: Optional[str] = typer.Option(None, "--regularizer", help="A training regularizer: gradient-restriction (what the iau method assumes; double backprop, about 2x the training cost)."),
    param: list[str] = typer.Option([], "--param", help="Regularizer parameter k=v, e.g. alpha=0.005 (with --regularizer)."),
    device: str = DeviceOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the request's seed."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output (only a checkpoint)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    num_workers: int = NumWorkersOpt,
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Train the request's architecture on its train split (optionally without the forget set, optionally from --init)."""
    from unlearn_tool import commands
    from unlearn_tool.request import parse_key_values

    options = dict(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, regularizer=regularizer,
                   regularizer_params=parse_key_values(param))
    with progress_bars(not quiet and not as_json) as progress:
        summary = commands.train(request, output, options=options,
                                exclude_forget=exclude_forget, force=force, device=device, seed=seed,
                                code=code_policy(code_path, trust_code), progress=progress, init=init, num_workers=num_workers)
    if as_json:
        print_json(summary)
    elif not quiet:
        err(f"wrote {output}: test accuracy {_fmt(summary['test_acc'])}, {summary['train_size']} training samples, {summary['wall_time_s']:.1f}s")


@app.command()
@handle_errors
def methods(name: Optional[str] = typer.Argument(None, help="A method name, to list its parameters."),
            as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the registered unlearning methods, or one method's parameters."""
    from unlearn_tool.method_catalog import describe  # torch-free: a cache of the registry

    if name is None:
        entries = describe()
        if as_json:
            print_json(entries)
            return
        width = max(len(e["name"]) for e in entries)
        for e in entries:
            typer.echo(f"{e['name']:<{width}}  {e['summary']}")
        return
    info = describe(name)
    if as_json:
        print_json(info)
        return
    typer.echo(f"{info['name']}: {info['summary']}")
    if info["reference"]:
        typer.echo(f"reference: {info['reference']}")
    typer.echo(f"tasks: {', '.join(info['tasks'])}; scenarios: {', '.join(info['scenarios'])}"
               + ("; adapter output" if info["adapter"] else "") + ("; label-free" if info["label_free"] else ""))
    for f in info["params"]:
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


from . import audit as _audit  # noqa: E402,F401  (registers the command)
from . import bench as _bench  # noqa: E402,F401  (registers the command)

if __name__ == "__main__":  # pragma: no cover
    app()
