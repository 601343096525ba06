"""The `unlearn` command-line interface (thin Typer layer over unlearn_tool)."""
