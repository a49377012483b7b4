"""
tracemalloc inside the gateway process for ``irc_scale --heap``: imported
before the gateway by ``python -c``, it starts tracing and, on SIGUSR1, writes
the top allocation sites to ``$GATEWAY_HEAP_OUT``. A signal (not a timer) so
the snapshot is taken when the benchmark says the joins are done. SIGUSR2,
sent before the joins, keeps a baseline: the dump then also lists what grew
since, per file and per line, so the per-user bytes are not hidden among imports.
"""

from __future__ import annotations

import gc
import os
import signal
import tracemalloc

TOP = int(os.environ.get("GATEWAY_HEAP_TOP", "20"))


_baseline: list = []


def _snapshot():
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))


def _mark(signum, frame) -> None:
    _baseline[:] = [_snapshot()]


def _dump(signum, frame) -> None:
    snapshot = _snapshot()
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 1024:.0f} KiB, peak {peak / 1024:.0f} KiB"]
    for stat in snapshot.statistics("lineno")[:TOP]:
        frame0 = stat.traceback[0]
        lines.append(f"{stat.size / 1024:10.1f} KiB {stat.count:8d} blocks  {frame0.filename}:{frame0.lineno}")
    if _baseline:
        for key in ("filename", "lineno"):
            diff = snapshot.compare_to(_baseline[0], key)
            lines.append(f"grown since the baseline, by {key}: {sum(d.size_diff for d in diff) / 1024:.0f} KiB in all")
            for stat in diff[:TOP]:
                frame0 = stat.traceback[0]
                where = frame0.filename if key == "filename" else f"{frame0.filename}:{frame0.lineno}"
                lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks  {where}")
    path = os.environ.get("GATEWAY_HEAP_OUT", "gateway-heap.txt")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


tracemalloc.start(1)
signal.signal(signal.SIGUSR1, _dump)
signal.signal(signal.SIGUSR2, _mark)
