"""Where a process's memory goes, on demand (a debugging aid, off unless asked for).

With `FAILOVERVM_MEMDEBUG=<file prefix>` in its environment, the controller starts `tracemalloc`
(FAILOVERVM_MEMDEBUG_FRAMES frames per allocation, default 1; 0: RSS and objects only) and, on SIGUSR2, writes
`<prefix>.<pid>.<n>.txt`: its RSS, the memory Python objects hold (tracemalloc), the largest
allocation sites and object types, then the RSS again after a full garbage collection and a
`malloc_trim` (the difference is memory freed but kept by the allocator). docs/scale.md says what
was found with it. tracemalloc slows the process down many times over: never for timings."""

from __future__ import annotations

import collections
import gc
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

from failovervm import malloc

ENV = "FAILOVERVM_MEMDEBUG"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report() -> str:
    lines = [f"RSS {rss_mib():.1f} MiB"]
    if tracemalloc.is_tracing():
        cur, peak = tracemalloc.get_traced_memory()
        lines.append(f"traced by tracemalloc: {cur / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB)")
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        lines.append("-- top allocation sites (by line)")
        for stat in snap.statistics("lineno")[:40]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d} {stat.traceback[0]}")
        lines.append("-- top allocation sites (by traceback)")
        for stat in snap.statistics("traceback")[:12]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d}")
            lines.extend(f"      {frame}" for frame in stat.traceback.format()[-16:])
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    lines.append("-- objects tracked by the GC, by type")
    lines.extend(f"{n:10d} {t}" for t, n in counts.most_common(30))
    gc.collect()
    trimmed = malloc.trim()
    lines.append(f"RSS after gc.collect() and malloc_trim ({trimmed}): {rss_mib():.1f} MiB")
    return "\n".join(lines) + "\n"


def install() -> bool:
    """Start tracing and dump on SIGUSR2 when FAILOVERVM_MEMDEBUG is set; True then."""
    prefix = os.environ.get(ENV)
    if not prefix:
        return False
    frames = int(os.environ.get(f"{ENV}_FRAMES") or 1)  # each frame more costs much CPU; 0: no tracemalloc
    if frames > 0:
        tracemalloc.start(frames)
    dumps = {"n": 0}

    def dump(_sig: int, _frame: FrameType | None) -> None:
        dumps["n"] += 1
        Path(f"{prefix}.{os.getpid()}.{dumps['n']}.txt").write_text(report())

    signal.signal(signal.SIGUSR2, dump)
    return True
