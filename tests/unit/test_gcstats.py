"""failovervm.gcstats: every collection's time lands in its generation's counter."""

from __future__ import annotations

import gc

from failovervm import gcstats


def _value(gen: int) -> float:
    return gcstats.GC_SECONDS.labels(str(gen))._value.get()


def test_collections_are_timed_by_generation() -> None:
    timer = gcstats.install()
    try:
        assert gcstats.install() is timer  # once per process
        before = [_value(g) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        after = [_value(g) for g in range(3)]
        assert after[0] > before[0] and after[2] > before[2]
    finally:
        gc.callbacks.remove(timer)
