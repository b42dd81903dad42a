"""failovervm.gcstats: every collection's time lands in its generation's counter."""

from __future__ import annotations

import gc
import time

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


def test_refreeze_collects_frozen_cycles_and_freezes_what_survives() -> None:
    class Node:
        other: object = None

    try:
        gc.freeze()
        kept = [Node()]
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle, frozen below
        gc.freeze()
        del a, b
        assert gc.collect() == 0  # frozen: no collection sees the cycle
        assert gcstats.refreeze() >= 2  # the refreeze does
        assert gc.get_freeze_count() > 0 and gc.get_count()[0] < 700  # what survived is frozen again
        assert not gc.is_finalized(kept[0])
    finally:
        gc.unfreeze()


def test_refreeze_interval_comes_from_the_environment() -> None:
    assert gcstats.refreeze_seconds({}) == gcstats.REFREEZE_SECONDS
    assert gcstats.refreeze_seconds({gcstats.REFREEZE_ENV: "0"}) == 0
    assert gcstats.start_refreezing({gcstats.REFREEZE_ENV: "0"}) is None
    for bad in ("-1", "soon"):
        try:
            gcstats.refreeze_seconds({gcstats.REFREEZE_ENV: bad})
        except ValueError as exc:
            assert gcstats.REFREEZE_ENV in str(exc)
        else:
            raise AssertionError(bad)
    refreezer = gcstats.start_refreezing({gcstats.REFREEZE_ENV: "0.01"})
    assert refreezer is not None
    try:
        gc.unfreeze()
        deadline = time.monotonic() + 5
        while gc.get_freeze_count() == 0:  # refrozen by the thread
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        refreezer.stop()
        gc.unfreeze()
