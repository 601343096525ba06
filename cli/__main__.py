"""`python -m cli` runs the same app as the `unlearn` console script."""

from cli.main import run

run()
