"""glibc malloc tuning for the long-running processes (controller, agent).

glibc gives every thread that allocates an arena of its own (up to 8 per core), and each keeps the
memory its thread freed; and freed memory at the top of the heap or in whole free pages is returned
to the kernel only by `malloc_trim`. Measured at 1,000 VMs, neither the arena cap, the fixed
thresholds nor the periodic trim moved the controller's RSS measurably: its bulk is live data
(docs/scale.md, run H), kept here as cheap insurance. A libc without these functions (musl) is left alone."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

# glibc's mallopt parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# Blocks from this size on get their own mapping, returned to the kernel when freed (API responses,
# JSON texts of LISTs). glibc's default starts at 128 KiB but raises itself up to 32 MiB after such a
# block is freed, so that later big responses land in the heap and leave it fragmented.
MMAP_THRESHOLD = 256 * 1024
# Free memory at the top of the heap beyond this is returned at once (fixed, like the above).
TRIM_THRESHOLD = 1024 * 1024


@cache
def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def limit_arenas(arenas: int = 2) -> bool:
    """At most `arenas` malloc arenas in this process, and fixed mmap and trim thresholds (above):
    set before any thread starts (like MALLOC_ARENA_MAX=2). True when set."""
    try:
        libc = _libc()
        return all([bool(libc.mallopt(M_ARENA_MAX, arenas)), bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)),
                    bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))])
    except (OSError, AttributeError):
        return False


def trim() -> bool:
    """Return the free memory of every arena to the kernel (glibc's malloc_trim(0)). True when some
    was returned."""
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False
