"""
tracemalloc inside the gateway process for ``irc_scale --heap``: imported
before the gateway by ``python -c``, it starts tracing and, on SIGUSR1, writes
the top allocation sites to ``$GATEWAY_HEAP_OUT``. A signal (not a timer) so
the snapshot is taken when the benchmark says the joins are done.
"""

from __future__ import annotations

import gc
import os
import signal
import tracemalloc

TOP = int(os.environ.get("GATEWAY_HEAP_TOP", "20"))


def _dump(signum, frame) -> None:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 1024:.0f} KiB, peak {peak / 1024:.0f} KiB"]
    for stat in snapshot.statistics("lineno")[:TOP]:
        frame0 = stat.traceback[0]
        lines.append(f"{stat.size / 1024:10.1f} KiB {stat.count:8d} blocks  {frame0.filename}:{frame0.lineno}")
    path = os.environ.get("GATEWAY_HEAP_OUT", "gateway-heap.txt")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


tracemalloc.start(1)
signal.signal(signal.SIGUSR1, _dump)
