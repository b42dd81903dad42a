"""Python's cyclic garbage collector in the controller: how long it takes (Prometheus counters by
generation), and its tuning.

prometheus_client reports how many collections ran (python_gc_collections_total), not how long they
took. A collection of the oldest generation walks every container object the process holds (for
the controller: every cached VM, pod and claim, and every module it imported), so its cost grows
with the cluster. The callbacks cost two clock reads per collection.

A collection holds the event loop (the admission webhooks, every handler) for as long as it runs,
so each one's length is also kept as a histogram (failovervm_python_gc_pause_seconds): the longest
pauses, not only their sum, decide how large the young generation may be.

Tuning (`tune`): CPython collects its oldest generation once ten collections of the middle one
ran and a quarter of what it holds is new since its last collection. The controller allocates
many container objects (each watch event is a JSON tree, then Kopf's wrappers around it) and keeps
many alive for a while (the events queued during a burst of creates), so they survive two young
collections and land in the oldest generation; each of its collections then walks the whole cache
again. Measured at 1,000 / 5,000 VMs: 6.0 / 10.7 ms of the controller's 19.8 / 24.2 ms of CPU per
VM (docs/scale.md), the only part that grew with N. The oldest generation is now collected a tenth
as often (it is where collections cost), the youngest after 50,000 net allocations instead of 700
(see THRESHOLDS), and what exists when the operator starts (modules, classes, settings) is frozen
out of every collection. Cycles are still collected, later.

Most of what those collections found was not garbage of the operator's making: Kopf's views of
each event's body formed reference cycles, so every event's JSON tree waited for a collection
instead of being freed when Kopf dropped it. controller/kopfviews.py removes those cycles (16,400
cyclic objects/s during a burst of creates before, 100/s after, counted with memdebug's census).
At 5,000 VMs the collector's share fell from 7.5 to 4.7 ms per VM (the oldest generation's from
4.3 to 2.1 ms), and to 2.2-3.1 ms with the thresholds now, in pauses of tens of milliseconds."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Histogram

GC_SECONDS = Counter("failovervm_python_gc_seconds_total",
                     "Time spent in Python's cyclic garbage collector, by generation", ["generation"])
# From a young collection of a few thousand objects (well under a millisecond) to a full one of a
# large cache (a second or more).
PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
GC_PAUSE = Histogram("failovervm_python_gc_pause_seconds",
                     "How long each collection of Python's cyclic garbage collector held the process, by generation",
                     ["generation"], buckets=PAUSE_BUCKETS)


class GcTimer:
    """gc.callbacks entry: times each collection (start to stop) into GC_SECONDS and GC_PAUSE."""

    def __init__(self) -> None:
        self._started = 0.0
        self._counters = [GC_SECONDS.labels(str(g)) for g in range(3)]
        self._pauses = [GC_PAUSE.labels(str(g)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            took, gen = time.perf_counter() - self._started, int(info.get("generation", 2))
            self._counters[gen].inc(took)
            self._pauses[gen].observe(took)
            self._started = 0.0


def install() -> GcTimer:
    """Time every collection from now on (once per process)."""
    for cb in gc.callbacks:
        if isinstance(cb, GcTimer):
            return cb
    timer = GcTimer()
    gc.callbacks.append(timer)
    return timer


# gc.set_threshold: the youngest generation is collected after this many net allocations of
# container objects (CPython: 700), the middle one every 20 of those (CPython: 10), the oldest every
# 100 of those (CPython: 10; and only once a quarter of what it holds is new). Until Kopf's views
# stopped making every event body cyclic garbage (controller/kopfviews.py) they were (700, 10, 30):
# a larger first threshold then cost memory (50 MiB more at 1,000 VMs with 50,000), since garbage
# waited longer for its collection. With little cyclic garbage left (about 100 objects/s), what a
# young collection walks is the events still queued while the controller is behind, and fewer
# collections walk it less often, but each for longer, holding the event loop (the webhooks' answers)
# meanwhile. Measured at 1,000 / 5,000 VMs during a burst of creates (docs/scale.md, runs V1 to V7):
# (50000, 20, 100) took 0.5-1.0 / 1.1-1.4 ms of collector per VM, its young collections 79-168 ms
# each and its middle ones up to 0.4-1.0 s (the longest under 2 s) at 5,000; (200000, 20, 100) 0.2 /
# 1.0 ms, young collections of 0.2-0.45 s; (10000, 20, 100), the default, 1.2-2.0 / 2.2-3.1 ms,
# young collections of 23-41 ms and middle ones of 0.33-0.45 s (the longest under 1 s): about 1 ms
# of the controller's CPU per VM more for pauses a quarter as long. The oldest generation did not run in
# any of those. The controller's whole CPU per VM varies between runs more than the collector's
# share. FAILOVERVM_GC_THRESHOLDS="a,b,c" overrides them.
THRESHOLDS = (10000, 20, 100)
ENV = "FAILOVERVM_GC_THRESHOLDS"


def thresholds(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """The thresholds to use: $FAILOVERVM_GC_THRESHOLDS (three positive integers) or THRESHOLDS."""
    raw = environ.get(ENV, "").strip()
    if not raw:
        return THRESHOLDS
    try:
        parts = tuple(int(p) for p in raw.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"{ENV}={raw!r}: expected three positive integers, e.g. 10000,20,100")
    return parts[0], parts[1], parts[2]


def tune(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """Set the collector's thresholds and freeze what exists now (call once, after the imports and
    before the operator starts). Returns the thresholds set."""
    chosen = thresholds(environ)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*chosen)
    return chosen
