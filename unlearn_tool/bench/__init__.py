"""`unlearn bench`: several methods on one request over several seeds, audited and compared (docs/methods.md).

`run.py` runs and summarises; `render.py` draws the table, the plot and the files. No typer here:
the command is cli/bench.py.
"""

from .render import (  # noqa: F401
    BENCH_FILES,
    best_method,
    default_report_dir,
    gap_label,
    markdown_table,
    pareto_front,
    plot_png,
    render_csv,
    render_markdown,
    table,
    to_json,
    write_bench,
)
from .run import (  # noqa: F401
    REPEAT_BELOW_S,
    SCHEMA,
    SeedSetup,
    assemble,
    audit_model,
    baseline_run,
    bench_request,
    median_wall,
    method_params,
    one_line,
    run_bench,
    run_methods,
    run_one,
    select_methods,
    split_overrides,
    summarize,
    with_gap,
)
