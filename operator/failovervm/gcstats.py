"""The time Python's cyclic garbage collector takes, per generation, as Prometheus counters.

prometheus_client reports how many collections ran (python_gc_collections_total), not how long they
took. A collection of the oldest generation walks every container object the process holds (for
the controller: every cached VM, pod and claim), so its cost grows with the cluster; this is how
docs/scale.md measures it. The callbacks cost two clock reads per collection."""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Counter

GC_SECONDS = Counter("failovervm_python_gc_seconds_total",
                     "Time spent in Python's cyclic garbage collector, by generation", ["generation"])


class GcTimer:
    """gc.callbacks entry: times each collection (start to stop) into GC_SECONDS."""

    def __init__(self) -> None:
        self._started = 0.0
        self._counters = [GC_SECONDS.labels(str(g)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self._counters[int(info.get("generation", 2))].inc(time.perf_counter() - self._started)
            self._started = 0.0


def install() -> GcTimer:
    """Time every collection from now on (once per process)."""
    for cb in gc.callbacks:
        if isinstance(cb, GcTimer):
            return cb
    timer = GcTimer()
    gc.callbacks.append(timer)
    return timer
