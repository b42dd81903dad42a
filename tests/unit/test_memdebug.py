"""failovervm.memdebug's garbage census: what the collector found unreachable, counted by kind."""

from __future__ import annotations

import asyncio
import gc

from failovervm import memdebug


class _Node:
    def __init__(self) -> None:
        self.me = self


async def _fails() -> None:
    err = None
    try:
        raise ValueError("kept by its own traceback")
    except ValueError as exc:
        err = exc  # the frame holds the exception, whose traceback holds the frame: a cycle
    assert err is not None


def test_census_names_cycles_by_code_and_class_and_drops_them() -> None:
    gc.collect()
    old = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        _Node()
        asyncio.run(_fails())
        gc.collect()
        garbage = gc.garbage
        census = memdebug.Census()
        assert census.take(garbage) >= 2
        assert garbage == []
    finally:
        gc.set_debug(old)
        gc.garbage.clear()
    kinds = census.totals
    assert kinds[f"_Node ({__name__})"] == 1
    assert any(k.startswith("frame _fails (test_memdebug.py:") for k in kinds)
    assert kinds["exception builtins.ValueError"] >= 1
    report = census.report(2.0)
    assert report.splitlines()[0].startswith(f"{census.objects} cyclic garbage objects in 1 rounds over 2 s")


def test_census_is_off_unless_asked_for() -> None:
    assert memdebug.install_census({}) is None
    assert not gc.get_debug() & gc.DEBUG_SAVEALL
