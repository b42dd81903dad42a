"""controller/kopftoggles.py: Kopf's index pre-population wakes its waiting workers only when the
set of toggles changes state, so a start over T objects costs O(T), not O(T²)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from failovervm.controller import kopftoggles


@pytest.fixture
def kopfs_own() -> Iterator[None]:
    for attr, fn in kopftoggles.ORIGINAL.items():
        setattr(kopftoggles.ToggleSet, attr, fn)
    try:
        yield
    finally:
        assert kopftoggles.install()


async def _prepopulate(n: int) -> tuple[int, list[bool]]:
    """What Kopf does at start for n listed objects (kopf/_core/reactor/queueing.py and
    processing.py): a toggle per object, then each object's worker, as its object arrives, drops its
    own and waits for the whole set; returns how often the waiters' predicate ran, and whether each
    worker got through."""
    tset = kopftoggles.ToggleSet(all)
    blocker = await tset.make_toggle(name="orchestration blocker")
    toggles = [await tset.make_toggle(name=str(i)) for i in range(n)]
    checks = 0
    is_on = tset.is_on

    def counted() -> bool:
        nonlocal checks
        checks += 1
        return is_on()

    tset.is_on = counted  # type: ignore[method-assign]

    async def worker(toggle: kopftoggles.Toggle) -> bool:
        await tset.drop_toggle(toggle)
        await tset.wait_for(True)
        return True

    tasks = []
    for t in toggles:  # the listing's objects arrive one after another: each worker waits before the next
        tasks.append(asyncio.ensure_future(worker(t)))
        for _ in range(3):
            await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)  # the blocker holds them all
    await tset.drop_toggle(blocker)
    done = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return checks, done


def test_a_start_over_many_objects_wakes_each_waiter_about_once() -> None:
    assert kopftoggles.install()
    checks, done = asyncio.run(_prepopulate(5000))
    assert all(done)
    assert checks < 5 * 5000  # linear: each drop checks the state twice, each waiter wakes once


def test_kopfs_own_toggle_set_is_quadratic_there(kopfs_own: None) -> None:
    assert not kopftoggles.efficient()
    checks, done = asyncio.run(_prepopulate(300))
    assert all(done)
    assert checks > 300 * 300 / 4  # every drop woke every waiter


def test_the_set_still_switches_both_ways_and_single_toggles_still_wake() -> None:
    assert kopftoggles.install()

    async def scenario() -> None:
        tset = kopftoggles.ToggleSet(any)
        a = await tset.make_toggle(name="a")
        on = asyncio.ensure_future(tset.wait_for(True))
        await asyncio.sleep(0)
        assert not on.done()
        b = await tset.make_toggle(True, name="b")  # a toggle made on turns an any() set on
        await asyncio.wait_for(on, 1)
        off = asyncio.ensure_future(tset.wait_for(False))
        single = asyncio.ensure_future(a.wait_for(True))
        await asyncio.sleep(0)
        await tset.drop_toggles([b])
        await asyncio.wait_for(off, 1)
        assert not single.done()
        await a.turn_to(True)  # a toggle of the set turned on: its own waiter, and the set's
        await asyncio.wait_for(single, 1)
        assert tset.is_on()

    asyncio.run(scenario())
