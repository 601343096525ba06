"""`unlearn bench`: several methods, one request, several seeds, one comparison table.

Registers on the app of cli/app.py (cli/main.py imports this module). No torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .common import err, handle_errors, markup_safe, metric_text, print_json, progress_bars
from .app import CodePathOpt, DeviceOpt, NumWorkersOpt, PrecisionOpt, RequestOpt, TrustCodeOpt, app, code_policy


SHORT = {"RA %": "RA%", "UA %": "UA%", "TA %": "TA%", "TA remaining %": "TA kept%", "TA forgotten %": "TA fgt%",
         "MIA-Efficacy %": "MIA-E%", "loss AUC": "AUC", "wall s": "s", "time / retrain %": "t/rt%"}


def print_table(bench: dict[str, Any], folder: Path) -> None:
    """The comparison as a rich table on stderr that fits the terminal (or $COLUMNS), then failures and the files."""
    import os

    from rich.console import Console
    from rich.table import Table

    from unlearn_tool.bench import best_method, gap_label, pareto_front, table

    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else None
    console = Console(stderr=True, width=width) if width or Console(stderr=True).is_terminal else Console(stderr=True, width=200)
    header, rows = table(bench)
    req = bench["request"]
    compact = console.width < 180
    t = Table(title=markup_safe(f"bench of request {req['id']} ({req['scenario']} unlearning), mean ± std over seeds {', '.join(map(str, bench['seeds']))}"),
              padding=(0, 1) if not compact else (0, 0), collapse_padding=True)
    for i, h in enumerate(header):
        label = ("Gap" if h == gap_label(bench) else SHORT.get(h, h)) if compact else h
        wraps = h in ("error", "status") or compact
        t.add_column(label, justify="left" if i == 0 or h in ("error", "status") else "right", no_wrap=not wraps, overflow="fold")
    has_errors = header[-1] == "error"
    for r in rows:
        t.add_row(*(markup_safe(c) for c in r), style=("red" if r[-1].startswith("FAILED") else "yellow" if r[-1] else None) if has_errors else None)
    console.print(t)
    if compact:
        console.print(f"Gap = {gap_label(bench)} (points); kept/fgt = remaining/forgotten classes; MIA-E = MIA-Efficacy; "
                      "s = method wall time; t/rt = time over retraining", highlight=False)
    if any((e["metrics"].get("train_time_s") or {}).get("mean") is not None for e in bench["methods"].values()):
        console.print("exact rows (s3t, sisa): wall time = the deletion's latency (no gradient step); train s = the artifact's "
                      "one-off training, not in the wall time or the plot", highlight=False)
    if bench["baseline"] == "original":
        console.print("[yellow]no --reference or --retrain: Avg Gap is the distance from the original, not to a retrained model[/yellow]", highlight=False)
    elif (best := best_method(bench)) is not None:
        console.print(f"lowest {gap_label(bench)}: [bold]{markup_safe(best)}[/bold]; Pareto front (time vs gap): "
                      f"{markup_safe(', '.join(pareto_front(bench)))}", highlight=False)
    console.print(f"reports in {markup_safe(folder)} (bench.json, bench.csv, bench.md, bench.png)", highlight=False)


@app.command()
@handle_errors
def bench(
    checkpoint: Path = typer.Argument(..., help="Trained model (.safetensors, or a save_pretrained folder for hf:<folder> models)."),
    request: Path = RequestOpt,
    methods: str = typer.Option(..., "--methods", help="Comma-separated method names, or 'all' (see `unlearn methods`).", show_default=False),
    seeds: int = typer.Option(3, "--seeds", help="Runs per method, with seeds request seed, +1, +2, ..."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Retrained-without-the-forget-set checkpoint: Avg Gap baseline (audited once); its wall_time_s metadata gives the retraining time."),
    retrain: bool = typer.Option(False, "--retrain", help="Run the retrain method once per seed as the baseline (and the retraining time)."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="Where to write bench.json/.csv/.md/.png (default <checkpoint stem>.bench/ beside it)."),
    param: list[str] = typer.Option([], "--param", metavar="K=V", help="METHOD.key=value for one method (repeatable), e.g. finetune.epochs=2; retrain.* also sets the --retrain baseline's."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    as_json: bool = typer.Option(False, "--json", help="Print bench.json on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or table."),
    num_workers: int = NumWorkersOpt,
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
    time_repeats: int = typer.Option(3, "--time-repeats", help="A method (or --retrain) run shorter than 1 s is run this many times and timed by the median: the first run of a process pays a one-off warm-up."),
) -> None:
    """Compare unlearning methods on one request over several seeds: audit figures, Avg Gap, time (a failing method is a row, not an exit)."""
    from unlearn_tool import commands
    from unlearn_tool.request import parse_key_values

    show = not quiet and not as_json

    def on_run(name: str, seed: int, record: dict[str, Any]) -> None:
        if not show:
            return
        if record["error"]:
            err(f"{name} seed {seed}: FAILED: {record['error']}")
        else:
            m = record["metrics"]
            gap = "-" if m["avg_gap"] is None else f"{m['avg_gap']:.2f}"
            kind, label = ("acc", "acc") if "forget_acc" in m else ("mae", "MAE")
            err(f"{name} seed {seed}: forget {label} {metric_text('forget_' + kind, m.get('forget_' + kind))}, "
                f"test {label} {metric_text('test_' + kind, m.get('test_' + kind))}, avg gap {gap}, {m['wall_time_s']:.2f}s")

    with progress_bars(show) as progress:
        result, folder = commands.bench(request, checkpoint, methods, seeds=seeds, reference=reference, retrain=retrain,
                                       report_dir=report_dir, param_overrides=parse_key_values(param), device=device, precision=precision,
                                       code=code_policy(code_path, trust_code), progress=progress, on_run=on_run,
                                       num_workers=num_workers, timing_repeats=time_repeats)
    if as_json:
        import json

        from unlearn_tool.bench import to_json

        print_json(json.loads(to_json(result)))
    elif not quiet:
        print_table(result, folder)
