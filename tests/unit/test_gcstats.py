"""failovervm.gcstats: every collection's time lands in its generation's counter and pause histogram."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from failovervm import gcstats


def _value(gen: int) -> float:
    return gcstats.GC_SECONDS.labels(str(gen))._value.get()


def _pauses(gen: int) -> float:
    return REGISTRY.get_sample_value("failovervm_python_gc_pause_seconds_count", {"generation": str(gen)}) or 0.0


def test_collections_are_timed_by_generation() -> None:
    timer = gcstats.install()
    try:
        assert gcstats.install() is timer  # once per process
        before, pauses = [_value(g) for g in range(3)], [_pauses(g) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        after = [_value(g) for g in range(3)]
        assert after[0] > before[0] and after[2] > before[2]
        # Each collection is one observation of its generation's pause (a young one may also have
        # run on its own meanwhile).
        assert _pauses(0) >= pauses[0] + 1 and _pauses(2) == pauses[2] + 1
    finally:
        gc.callbacks.remove(timer)


def test_thresholds_come_from_the_environment_or_the_default() -> None:
    assert gcstats.thresholds({}) == gcstats.THRESHOLDS
    assert gcstats.thresholds({gcstats.ENV: " 700,10,10 "}) == (700, 10, 10)
    for bad in ("1,2", "a,b,c", "0,10,10", "1,2,3,4"):
        try:
            gcstats.thresholds({gcstats.ENV: bad})
        except ValueError as exc:
            assert gcstats.ENV in str(exc)
        else:
            raise AssertionError(bad)


def test_tune_sets_the_thresholds_and_freezes_what_exists() -> None:
    saved = gc.get_threshold()
    try:
        assert gcstats.tune({gcstats.ENV: "1234,5,6"}) == (1234, 5, 6)
        assert gc.get_threshold() == (1234, 5, 6)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
