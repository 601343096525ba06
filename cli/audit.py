"""`unlearn audit`: measure whether the model forgot, against the original and a retrained reference.

Registers on the app of cli/app.py (cli/main.py imports this module). No torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .common import err, handle_errors, markup_safe, print_json, progress_bars


def gate_rows(report: dict[str, Any]) -> list[list[str]]:
    from unlearn_tool.audit.report import gate_rows as rows

    return rows(report)
from .app import CodePathOpt, DeviceOpt, NumWorkersOpt, RequestOpt, TrustCodeOpt, app, code_policy


def print_summary(report: dict[str, Any], folder: Path) -> None:
    """On stderr: the verdict sentence, its evidence and the utility cost; then the metrics, gates and warnings."""
    from rich.console import Console
    from rich.table import Table

    from unlearn_tool.audit.report import avg_gap_sentence, summary_rows, verdict_block

    console = Console(stderr=True)
    sentence, evidence, utility = verdict_block(report)
    header, rows = summary_rows(report)
    table = Table(title=markup_safe(f"audit of request {report['request']['id']} ({report['request']['scenario']} unlearning)"))
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(markup_safe(c) for c in r))
    console.print(table)
    console.print(markup_safe(avg_gap_sentence(report)), highlight=False)
    if report["gates"]:
        gates = Table(title="gates")
        for h in ("gate", "value", "result"):
            gates.add_column(h)
        for g in gate_rows(report):
            gates.add_row(markup_safe(g[0]), g[1], f"[green]{g[2]}[/green]" if g[2] == "pass" else f"[red]{g[2]}[/red]")
        console.print(gates)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {markup_safe(w)}", highlight=False)
    color = "green" if report["verdict"] == "pass" else "red"
    console.print(f"[bold {color}]{markup_safe(sentence)}[/bold {color}]", highlight=False)
    for line in evidence:
        console.print(f"  - {markup_safe(line)}", highlight=False)
    console.print(f"  {markup_safe(utility)}; reports in {markup_safe(folder)}", highlight=False)


def finish(report: dict[str, Any], folder: Path, as_json: bool, quiet: bool) -> None:
    """Print the outcome, then turn a failed gate into exit 3 (reports are already written)."""
    from unlearn_tool.audit import check_verdict

    if as_json or quiet:  # the summary shows them otherwise; a warning always reaches stderr (an adapter-only output's, above all),
        for w in report["warnings"]:  # before the JSON: a reader that leaves early (| head) does not take them with it
            err(f"warning: {w}")
    if as_json:
        print_json(report)
    elif not quiet:
        print_summary(report, folder)
    check_verdict(report, str(folder / "report.md"))


@app.command()
@handle_errors
def audit(
    request: Path = RequestOpt,
    original: Path = typer.Option(..., "--original", help="The trained model before unlearning (.safetensors; a save_pretrained folder for hf: models; an exact artifact folder).", show_default=False),
    unlearned: Path = typer.Option(..., "--unlearned", help="The unlearned model: a .safetensors file, a PEFT adapter folder, a save_pretrained folder (hf:) or an exact artifact folder.", show_default=False),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Retrained-without-the-forget-set model (default: the request's audit.reference)."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="Where to write report.json/.md/.html (default <unlearned stem>.audit/ beside it)."),
    gate: list[str] = typer.Option([], "--gate", metavar="EXPR", help="Gate 'metric op number', e.g. 'forget_acc <= 0.02' (repeatable; replaces the request's audit.gates)."),
    device: str = DeviceOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the request's seed (attack sampling, random model for ZRF)."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary table."),
    tier: str = typer.Option("standard", "--tier", help="standard (population attacks) or strong (adds per-example U-LiRA with shadow models, and relearn time; minutes)."),
    shadows: int = typer.Option(16, "--shadows", help="With --tier strong: shadow models (each a training run; cached)."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", metavar="FILE", help="The ledger of a checkpoint with a lineage (default <unlearned stem>.ledger.jsonl): earlier deletions are left out and re-checked for a relapse."),
    num_workers: int = NumWorkersOpt,
    code_path: list[Path] = CodePathOpt,
    trust_code: bool = TrustCodeOpt,
) -> None:
    """Audit an unlearned model: accuracies, membership inference, distances to a reference, gates (exit 3 if one fails)."""
    from unlearn_tool import commands

    with progress_bars(not quiet and not as_json) as progress:
        report, folder = commands.audit(request, original, unlearned, reference=reference, gates=gate or None, report_dir=report_dir,
                                       device=device, seed=seed, code=code_policy(code_path, trust_code), tier=tier, shadows=shadows,
                                       progress=progress, ledger=ledger, num_workers=num_workers)
    finish(report, folder, as_json, quiet)
