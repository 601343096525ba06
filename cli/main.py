"""`unlearn`: the command-line entry point. Thin: each command parses its options, calls one library function, prints.

Nothing here imports torch at module level, so `unlearn --help` answers instantly. The audit and
bench commands live in cli/audit.py and cli/bench.py and register on the same app (cli/app.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .app import CodePathOpt, DeviceOpt, NumWorkersOpt, PrecisionOpt, RequestOpt, TrustCodeOpt, app, code_policy
from unlearn_tool.interrupts import raise_interrupt_behind

from .common import err, handle_errors, headline, json_stdout, markup_safe, metric_text, plain, print_json, progress_bars


def _print_before_after(before: dict, after: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=markup_safe(title))
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in before:
        table.add_row(key, metric_text(key, before[key]), metric_text(key, after.get(key)))
    Console(stderr=True).print(table)


@app.command()
@handle_errors
def apply(
    checkpoint: Path = typer.Argument(..., help="Trained model (.safetensors, or a save_pretrained folder for hf:<folder> models)."),
    request: list[Path] = typer.Option(..., "--request", "-r", help="Deletion-request YAML (repeatable: several requests on the same model and data, applied in order, each a step of the lineage).", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output path (default <stem>.unlearned.safetensors beside the input; <folder>.unlearned/ for a save_pretrained folder)."),
    adapter_only: Optional[bool] = typer.Option(None, "--adapter-only/--merged", help="Write a PEFT adapter folder (LoRA methods) or merged weights; default: the request's output.mode.", show_default=False),
    method: Optional[str] = typer.Option(None, "--method", help="Override the request's method.name."),
    param: list[str] = typer.Option([], "--param", metavar="K=V", help="Method parameter k=v (repeatable; a later one of the same key wins); overrides the request's."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the request's seed."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output (only a checkpoint, or an adapter folder this tool wrote)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    audit: bool = typer.Option(False, "--audit", help="Audit the result right away (request's audit.gates and audit.reference); exit 3 if the verdict is fail (a gate, or the default policy when there is none)."),
    retrain_affected: bool = typer.Option(False, "--retrain-affected", help="Exact artifacts (train --exact): retrain the truncated stages on the remaining data (SISA's deletion) instead of only deactivating them."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="With --audit: where to write the reports (default <output stem>.audit/)."),
    summary_samples: int = typer.Option(1000, "--summary-samples", min=0, help="Retain and test samples the before/after summary evaluates (seeded; the forget set is always whole; 0: every sample). The audit evaluates everything."),
    num_workers: int = NumWorkersOpt,
    keep_on_fail: bool = typer.Option(True, "--keep-on-fail/--no-keep-on-fail", help="With --audit: keep the output when the verdict is fail (default; exit 3 either way), or publish it (and its ledger entry) only once the audit passes, leaving an earlier -o as it was."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", metavar="FILE", help="The JSON-lines ledger to read the checkpoint's lineage from and to extend (default <stem>.ledger.jsonl beside the checkpoint / the output). It holds one chain: a run that would cut another output's record from it is refused."),
    ignore_lineage: bool = typer.Option(False, "--ignore-lineage", help="Do not exclude the checkpoint's earlier deletions from the data (when their ledger is lost)."),
    record_ids: bool = typer.Option(False, "--record-ids", help="Also record the forgotten record IDs themselves in the output and the ledger (default: count and digest only)."),
    anchor: Optional[Path] = typer.Option(None, "--anchor", metavar="ORIGINAL", help="The lineage's original checkpoint (checked against the sha256 its lineage records): RFA keeps retained data aligned with it rather than with the input, so a stream of small requests does not compound utility losses. Default: the original file the ledger names, when it is still there."),
    no_anchor: bool = typer.Option(False, "--no-anchor", help="Align retained data with the input checkpoint itself, not with the lineage's original."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Forget the IDs that are in the data and report the others (default: unknown IDs are an error)."),
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Make the model forget what the request names and write the unlearned checkpoint."""
    from unlearn_tool import commands
    from unlearn_tool.request import parse_key_values

    params = parse_key_values(param)
    with progress_bars(not quiet and not as_json) as progress:
        outcome = commands.apply(request, checkpoint, method=method, params=params, output=output, adapter_only=adapter_only,
                                force=force, device=device, precision=precision, seed=seed, code=code_policy(code_path, trust_code),
                                audit=audit, report_dir=report_dir, keep_on_fail=keep_on_fail, ledger=ledger,
                                ignore_lineage=ignore_lineage, record_ids=record_ids, allow_missing=allow_missing, progress=progress,
                                summary_samples=summary_samples or None, num_workers=num_workers, anchor=anchor, no_anchor=no_anchor,
                                **({"retrain_affected": True} if retrain_affected else {}))
    result = outcome.result
    if result is None:  # another rank than 0 under torchrun: rank 0 reports
        return
    for w in result.warnings:
        err(f"warning: {w}")
    wall_parts = sum(v for k, v in outcome.timings.items() if not k.endswith("_cpu_s"))  # CPU times overlap the wall-time parts
    outcome.timings = {"startup_s": _since_process_start() - wall_parts, **outcome.timings,
                       "process_s": _since_process_start()}
    if as_json:
        print_json(outcome.summary())
    elif not quiet:
        _print_before_after(result.before, result.after, f"{result.method} on request {outcome.job.request.id}")
        from unlearn_tool.stop_text import stop_line

        stop = stop_line(result.info, result.params)
        if stop:
            err(stop)
        if result.before.get("test_remaining_acc") is not None:
            err("test_acc counts every test sample, the forgotten classes included; test_remaining_acc is the utility on the classes kept")
        if outcome.removed:
            err(f"unlearned in {result.wall_time_s:.2f}s, but did not publish {result.output} ({result.mode}): the audit failed "
                "(--no-keep-on-fail)" + ("; what was there before, and its ledger, are as they were" if result.output.exists() else ""))
        else:
            err(f"wrote {result.output} ({result.mode}) in {result.wall_time_s:.2f}s of unlearning")
        for note in getattr(result, "notes", []):  # an exact deletion's figures and guarantee
            err(note)
        summary = outcome.summary()
        if summary.get("ledger"):
            err(f"lineage: {summary['lineage_steps']} deletion(s) since the original; ledger {summary['ledger']}"
                + (f"; {summary['excluded_earlier']} samples of earlier deletions left out of the data" if summary["excluded_earlier"] else ""))
        if summary["missing_ids"]:
            err(f"{len(summary['missing_ids'])} requested ID(s) are not in the data and were skipped (--allow-missing)")
    if outcome.report is not None:
        from .audit import finish

        finish(outcome.report, outcome.report_dir, as_json=False, quiet=as_json or quiet)  # stdout already holds the apply summary


def _since_process_start() -> float:
    """Seconds since this process started (start-up included), for the timing breakdown."""
    import time

    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception as e:  # noqa: BLE001 - psutil missing: from the first import of this module
        raise_interrupt_behind(e)
        return time.perf_counter() - _IMPORTED_AT


_IMPORTED_AT = __import__("time").perf_counter()


@app.command()
def validate(
    request: Path = RequestOpt,
    checkpoint: Optional[Path] = typer.Argument(None, help="Optional checkpoint to check against the architecture."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON (also when they fail: {\"ok\": false, \"error\": ...})."),
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
    allow_missing: bool = typer.Option(False, "--allow-missing", help="As apply --allow-missing: IDs not in the data are reported, not an error."),
) -> None:
    """Check a request (schema, method parameters, data, classes/indices, checkpoint) without training."""

    def run() -> dict[str, Any]:
        from unlearn_tool import commands

        return commands.validate(request, checkpoint, code=code_policy(code_path, trust_code), allow_missing=allow_missing)

    if as_json:  # a failing check is a JSON answer too, so pipelines can parse stdout either way
        with json_stdout(True):
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
        + (f"({info['num_classes']} target column(s))" if info.get("task") == "regression" else f"({info['num_classes']} classes)")
        + f", method {info['method']}" + (f", checkpoint matches {info['checkpoint_matches']}" if checkpoint else "")
    ))
    if info.get("exact_note"):
        typer.echo(plain(info["exact_note"]))
    for note in info.get("notes", []) + ([info["note"]] if info.get("note") else []):
        typer.echo(plain(f"note: {note}"))
    if info.get("missing_ids"):
        typer.echo(plain(f"note: {len(info['missing_ids'])} requested ID(s) are not in the data and would be skipped (--allow-missing)"))


def _last_error() -> Optional[str]:
    from .common import LAST_ERROR

    return LAST_ERROR[-1] if LAST_ERROR else None


@app.command()
@handle_errors
def inspect(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint, an adapter folder, a save_pretrained folder (hf: models) or an exact artifact folder (train --exact)."),
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

    if info["kind"] == "exact":
        _print_exact(checkpoint, info)
        return

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


def _print_exact(path: Path, info: dict) -> None:
    """`unlearn inspect` of an exact artifact: one row per shard and sequence, its stages, and the budget."""
    from rich.console import Console
    from rich.table import Table

    b = info["budget"]
    table = Table(title=markup_safe(f"{path} (exact {info['method']}) — {b['active_components']} of {b['components']} components active, "
                                    f"{b['active_shards']} of {len(info['shards'])} shards serving, {len(info['deletions'])} deletion(s)"))
    for col in ("shard", "size", "sequence", "slice order", "active prefix", "stages (slices seen: status)", "serves"):
        table.add_column(col)
    for sh in info["shards"]:
        for seq in sh["sequences"]:
            stages = " ".join(f"{''.join(map(str, st['slices']))}:{'A' if st['status'] == 'active' else 'x'}" + (f"g{st['generation']}" if st["generation"] else "")
                              for st in seq["stages"])
            serving = sh["serving"] is not None and sh["serving"]["sequence"] == seq["sequence"]
            table.add_row(str(sh["shard"]), str(sh["size"]), str(seq["sequence"]), ",".join(map(str, seq["order"])),
                          f"{seq['prefix']}/{len(seq['stages'])}", stages, "yes" if serving else "")
    console = Console()
    console.print(table)
    lay = info["layout"]
    weights = f"given (sha256 {lay['deletion_weights_sha256'][:12]}...)" if lay["deletion_weights"] else "none"
    console.print(f"layout: assignment {lay['assignment']}; slice order {lay['order']}; deletion weights {weights}", highlight=False)
    console.print(f"deletion budget: {b['deletions_left']} more worst-case single-sample deletions (per shard {b['per_shard']})", highlight=False)
    console.print(markup_safe(f"guarantee: {info['guarantee']}"), highlight=False)
    console.print(markup_safe(f"params: {info['params']}; aggregation {info['aggregation']}; seed {info['seed']}; "
                              f"base {info['base']['source']} {info['base']['sha256'][:12]}...; manifest sha256 {info['sha256']}"), highlight=False)


@app.command()
@handle_errors
def train(
    request: Path = RequestOpt,
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the trained checkpoint (.safetensors; for hf:<folder> models any other name is a save_pretrained folder)."),
    exclude_forget: bool = typer.Option(False, "--exclude-forget", help="Train without the forget set: the retrain reference (from scratch, or from --init)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this pre-trained checkpoint of the same architecture (tensors whose shape differs, e.g. a new head, start fresh): fine-tuning."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the data (default 40; with --exact, the method's: s3t 10 per stage, sisa 40)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 1e-3; with --exact s3t, 5e-3)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam (default) or sgd."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size (default 64; with --exact s3t, 32)."),
    regularizer: Optional[str] = typer.Option(None, "--regularizer", help="A training regularizer: gradient-restriction (what the iau method assumes; double backprop, about 2x the training cost)."),
    param: list[str] = typer.Option([], "--param", metavar="K=V", help="Regularizer parameter k=v, e.g. alpha=0.005 (with --regularizer); with --exact, that method's parameter (shards=5, slices=4, ...)."),
    exact: Optional[str] = typer.Option(None, "--exact", help="Train an exact-unlearning artifact folder: s3t or sisa (docs/exact.md); see --param."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
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
                                exclude_forget=exclude_forget, force=force, device=device, precision=precision, seed=seed,
                                code=code_policy(code_path, trust_code), progress=progress, init=init, num_workers=num_workers,
                                **({"exact": exact} if exact is not None else {}))
    if summary.get("output") is None:  # another rank than 0 under torchrun: rank 0 reports
        return
    for w in summary.get("warnings", []):
        err(f"warning: {w}")
    if as_json:
        print_json(summary)
    elif not quiet and exact is not None:
        err(f"wrote {output} (exact {summary['method']}: {summary['shards']} shards x {summary['sequences']} sequence(s) x {summary['slices']} slices = "
            f"{summary['components']} components): {headline(summary)}, {summary['train_size']} training samples, "
            f"{summary['sample_epochs']:,} sample-epochs ({summary['sample_epochs'] / summary['normal_run_sample_epochs']:.2f}x a 40-epoch run), "
            f"{summary['wall_time_s']:.1f}s; deletion budget {summary['budget']['deletions_left']}")
    elif not quiet:
        err(f"wrote {output}: {headline(summary)}, {summary['train_size']} training samples, {summary['wall_time_s']:.1f}s")


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
        tasks = {e["name"]: "+".join(e["tasks"]) for e in entries}  # classification, regression or both
        task_width = max(len(t) for t in tasks.values())
        for e in entries:
            typer.echo(f"{e['name']:<{width}}  {tasks[e['name']]:<{task_width}}  {e['summary']}")
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


@app.command()
@handle_errors
def merge(
    adapter: Path = typer.Argument(..., help="An adapter folder written by `unlearn apply --adapter-only`."),
    base: Path = typer.Option(..., "--base", help="The checkpoint the adapter was trained on (its sha256 is checked).", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the merged checkpoint: a .safetensors file; for an hf: model, a save_pretrained folder unless named *.safetensors.", show_default=False),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output (only a checkpoint)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Fold an adapter into its base checkpoint: a drop-in merged checkpoint, after which the base can be deleted."""
    from unlearn_tool import commands

    summary = commands.merge(adapter, base, output, force=force, code=code_policy(code_path, trust_code))
    if as_json:
        print_json(summary)
    else:
        err(f"wrote {output} ({summary['output_kind']}): {base} + adapter {adapter} merged (sha256 {summary['sha256'][:12]}...); the forgotten data is now out of the weights")


@app.command()
@handle_errors
def ledger(
    args: list[str] = typer.Argument(..., help="CKPT to print its lineage, or `verify CKPT` to check every hash link.", metavar="[verify] CKPT"),
    original: Optional[Path] = typer.Option(None, "--original", help="With verify: the checkpoint the chain starts from."),
    ledger_file: Optional[Path] = typer.Option(None, "--ledger", metavar="FILE", help="The ledger (default <stem>.ledger.jsonl beside CKPT)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Print a checkpoint's chain of deletions, or verify it (`verify CKPT --original O`; exit 3 when it does not verify)."""
    from unlearn_tool import commands
    from unlearn_tool.errors import GateFailure, UnlearnError

    if args[0] == "verify":
        if len(args) != 2 or original is None:
            raise UnlearnError("usage: unlearn ledger verify CKPT --original ORIGINAL [--ledger FILE]")
        info = commands.ledger_verify(Path(args[1]), original, ledger_file)
        if as_json:
            print_json(info)
        else:
            for p in info["problems"]:
                err(f"problem: {p}")
            typer.echo(plain(f"{'verified' if info['ok'] else 'NOT VERIFIED'}: {len(info['steps'])} step(s) from {info['original_sha256'][:12]}... "
                             f"to {info['checkpoint_sha256'][:12]}... ({info['ledger']})"))
        if not info["ok"]:
            raise GateFailure(f"the lineage of {args[1]} does not verify: {info['problems'][0]}")
        return
    if len(args) != 1:
        raise UnlearnError("usage: unlearn ledger CKPT, or unlearn ledger verify CKPT --original ORIGINAL")
    info = commands.ledger_show(Path(args[0]), ledger_file)
    if as_json:
        print_json(info)
        return
    typer.echo(plain(f"{args[0]}: {len(info['steps'])} deletion(s) since original {info['original_sha256'][:12]}..."))
    for step in info["steps"]:
        typer.echo(plain(f"  step {step['step']}: request {step['request_id']} ({step['scenario']}, {step['forget_count']} samples, "
                         f"digest {step['forget_digest'][:12]}...) by {step['method']} on {step['parent_sha256'][:12]}... at {step['created_utc']}"))


@app.command()
@handle_errors
def examples(folder: Path = typer.Argument(..., help="A new folder to copy the example requests into.")) -> None:
    """Copy the example deletion requests (digits, CIFAR-10, Fashion-MNIST, a Hugging Face ViT) into FOLDER, to run the README's examples from there."""
    from unlearn_tool.quickstart import copy_examples

    for path in copy_examples(folder):
        typer.echo(plain(path))


from . import audit as _audit  # noqa: E402,F401  (registers the command)
from . import bench as _bench  # noqa: E402,F401  (registers the command)


def run() -> None:
    """The `unlearn` console script and `python -m cli`: the app, with a SIGTERM or SIGHUP that lands outside a command
    (while arguments are parsed, or once it returned) reported in one line, not silent. In-process runs (tests'
    CliRunner) call `app` and keep their own handlers.

    The process then ends at once (os._exit), without the interpreter's teardown: every output is published and closed
    by then, and during the teardown (torch's takes up to a second) Python has put the default handlers back, so a
    signal there ended the process with 143 and no word although the command had succeeded."""
    import os

    from .common import EXIT_SIGPIPE, report_signals_between_commands, stdout_error_line, stdout_gone, use_checked_stdout

    use_checked_stdout()
    report_signals_between_commands()
    try:
        app()
        code = 0
    except SystemExit as e:
        if e.code is not None and not isinstance(e.code, int):  # sys.exit("message"): Python would print it
            sys.stderr.write(f"{e.code}\n")
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:  # outside a command (validate's line, --version): the reader left
        stdout_gone()
        code = EXIT_SIGPIPE
    except OSError as e:  # the same, where stdout cannot take the line (> /dev/full): one line, not a traceback
        err(stdout_error_line(e))
        stdout_gone()
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # a closed pipe (| head): what was written is all the reader wanted
        stdout_gone()
        code = code or EXIT_SIGPIPE
    except (OSError, ValueError) as e:  # a full disk (> /dev/full): the output is lost, say so
        err(stdout_error_line(e) if isinstance(e, OSError) else f"error: could not write to standard output ({e})")
        code = code or 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
