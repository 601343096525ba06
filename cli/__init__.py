"""The `unlearn` command-line interface (thin Typer layer over unlearn_tool).

Before anything imports torch, the CLI asks OpenMP (libgomp, torch's CPU thread pool) to let idle threads sleep
instead of spinning, unless the user chose a wait policy (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`). With the default
spin, every torch op's threads busy-wait for each other; when another process holds one of the cores (a second
`unlearn` job, a test run, any busy neighbour), a waiting thread spins on the core the late thread needs, and a
step took 10 to 70 times longer on this project's 2-core machine (`benchmarks/cpu_threads.py`, docs/benchmarks.md).
"""

import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
