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
import threading
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from types import AsyncGeneratorType, CodeType, CoroutineType, FrameType, FunctionType, GeneratorType, MethodType

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


# The cyclic garbage census: what the collector frees, by kind (a debugging aid, off unless asked for).
# Reference counting frees most objects; only those in reference cycles wait for a collection, and the
# controller's collections cost what they walk (failovervm/gcstats.py). With
# `FAILOVERVM_GC_CENSUS=<file>` the collector keeps what it finds unreachable (gc.DEBUG_SAVEALL) and a
# thread counts it every FAILOVERVM_GC_CENSUS_SECONDS (default 5) and drops it, and writes the running
# totals to <file>.<pid>.txt: objects by type, and for code objects (frames, coroutines, functions,
# methods, generators) by their code's qualified name and file, exceptions by class. Costs one more
# pass over the garbage per interval and holds it that long: never for timings.
CENSUS_ENV = "FAILOVERVM_GC_CENSUS"


def garbage_kind(obj: object) -> str:
    """What a piece of cyclic garbage is, as precisely as its type allows."""
    kind = type(obj).__name__
    code: CodeType | None = None
    if isinstance(obj, FrameType):
        code = obj.f_code
    elif isinstance(obj, CoroutineType):
        code = obj.cr_code
    elif isinstance(obj, GeneratorType):
        code = obj.gi_code
    elif isinstance(obj, AsyncGeneratorType):
        code = obj.ag_code
    elif isinstance(obj, FunctionType):
        code = obj.__code__
    elif isinstance(obj, MethodType) and isinstance(obj.__func__, FunctionType):
        code = obj.__func__.__code__
    if code is not None:
        name = getattr(code, "co_qualname", code.co_name)
        return f"{kind} {name} ({Path(code.co_filename).name}:{code.co_firstlineno})"
    if isinstance(obj, BaseException):
        return f"exception {type(obj).__module__}.{kind}"
    if kind in ("dict", "list", "tuple", "cell", "set"):
        return kind
    return f"{kind} ({type(obj).__module__})"


class Census:
    """Running totals of the cyclic garbage, by kind."""

    def __init__(self) -> None:
        self.totals: collections.Counter[str] = collections.Counter()
        self.rounds = 0
        self.objects = 0

    def take(self, garbage: list[object]) -> int:
        """Count what the collector saved and drop it; how many objects it was. (A collection in
        another thread may append meanwhile: only the first `n` are taken, the rest stay for the
        next round.)"""
        n = len(garbage)
        batch = garbage[:n]
        del garbage[:n]
        self.totals.update(garbage_kind(o) for o in batch)
        self.rounds += 1
        self.objects += len(batch)
        return len(batch)

    def report(self, seconds: float) -> str:
        lines = [f"{self.objects} cyclic garbage objects in {self.rounds} rounds over {seconds:.0f} s "
                 f"({self.objects / max(seconds, 1e-9):.0f}/s)"]
        lines.extend(f"{n:10d} {kind}" for kind, n in self.totals.most_common(80))
        return "\n".join(lines) + "\n"


def install_census(environ: Mapping[str, str] = os.environ) -> Census | None:
    """Start the census thread when FAILOVERVM_GC_CENSUS is set."""
    path = environ.get(CENSUS_ENV)
    if not path:
        return None
    interval = float(environ.get(f"{CENSUS_ENV}_SECONDS") or 5)
    census = Census()
    out = Path(f"{path}.{os.getpid()}.txt")
    started = time.monotonic()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def loop() -> None:
        while True:
            time.sleep(interval)
            census.take(gc.garbage)
            out.write_text(census.report(time.monotonic() - started))

    threading.Thread(target=loop, name="gc-census", daemon=True).start()
    return census
