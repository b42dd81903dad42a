"""Kopf's index pre-population at start, linear instead of quadratic in the objects listed.

When the controller starts (a restart, an upgrade, a standby taking over) Kopf lists every object
of every indexed kind. Each object gets a toggle in one `ToggleSet(all)` (Kopf's
`operator_indexed`); its worker indexes the object, drops the toggle, and waits until the whole set
is on (every object of every kind indexed) before any handler runs. Kopf 1.45's `ToggleSet` wakes
every waiter on every toggle made or dropped (`notify_all`) and each re-checks the set: with T
objects listed, T wake-ups of up to T waiters, O(T²) on the event loop. A standby taking over 5,000
placed VMs (15,000 VMs, VM pods and VFClaims) spent 3 minutes of CPU in it and was not done yet;
with 2,000 VMs, 5 s (benchmarks/README.md, eleventh round). At 100,000 VMs it would never finish.

`install` makes `make_toggle`, `drop_toggle` and `drop_toggles` wake the waiters only when the
set's state (`is_on`) changes. A `ToggleSet` waiter waits for that state, so it cannot miss what it
waits for; a `Toggle` waiter (sharing the set's condition) waits for its own toggle's state, which
making or dropping another toggle does not change. `Toggle.turn_to` still wakes everyone, as
before. Kopf's code is not changed; `efficient` checks the result, the controller warns at start
if a Kopf upgrade defeats it, and tests/unit/test_kopftoggles.py fails then too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from kopf._cogs.aiokits import aiotoggles

ToggleSet = aiotoggles.ToggleSet
Toggle = aiotoggles.Toggle


def _changed(tset: Any, change: Callable[[], None]) -> None:
    """Change the set's toggles (its condition held) and wake the waiters only if its state changed."""
    before = tset.is_on()
    change()
    if tset.is_on() != before:
        tset._condition.notify_all()


async def make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Any:
    toggle = Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        _changed(self, lambda: self._toggles.add(toggle))
    return toggle


async def drop_toggle(self: Any, toggle: Any) -> None:
    async with self._condition:
        _changed(self, lambda: self._toggles.discard(toggle))


async def drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
    async with self._condition:
        _changed(self, lambda: self._toggles.difference_update(toggles))


PATCHES = {"make_toggle": make_toggle, "drop_toggle": drop_toggle, "drop_toggles": drop_toggles}
# Kopf's own methods, as imported (for the tests' comparison).
ORIGINAL = {attr: ToggleSet.__dict__[attr] for attr in PATCHES}


def install() -> bool:
    """Put the state-change-only notifications in place (idempotent); whether they work
    (`efficient`)."""
    for attr, fn in PATCHES.items():
        if ToggleSet.__dict__.get(attr) is not fn:
            setattr(ToggleSet, attr, fn)
    return efficient()


def efficient() -> bool:
    """Whether dropping one of many toggles wakes no waiter while the set stays off, and dropping
    the last one releases them all (on a private event loop)."""
    async def check() -> bool:
        tset = ToggleSet(all)
        toggles = [await tset.make_toggle(name=str(i)) for i in range(3)]
        wakeups = 0

        def pred() -> bool:
            nonlocal wakeups
            wakeups += 1
            return tset.is_on()

        async def waiter() -> None:
            async with tset._condition:
                await tset._condition.wait_for(pred)

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        first = wakeups
        await tset.drop_toggle(toggles[0])
        await tset.drop_toggles(toggles[1:2])
        await asyncio.sleep(0)
        quiet = wakeups == first and not task.done()
        await tset.drop_toggle(toggles[2])
        await asyncio.wait_for(task, 1.0)
        return quiet

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(check())
    except (TimeoutError, AttributeError, TypeError):
        return False
    finally:
        loop.close()
