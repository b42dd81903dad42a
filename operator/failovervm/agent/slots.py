"""The agent's reconcile slots: at most N reconciles do quick work at once (API writes, libvirt
calls that return at once), but a reconcile waiting for a guest to shut down (up to the VM's
terminationGracePeriodSeconds) gives its slot back for that time. Guests that ignore ACPI
shutdown then never hold up starts, VF hot-plugs or migrations of the node's other VMs."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from contextlib import contextmanager


class Slots:
    """`acquire`/`release` on the event loop; `slow()` from a reconcile's thread."""

    def __init__(self, n: int) -> None:
        self._sem = asyncio.Semaphore(n)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.slow_now = 0  # reconciles in a slow section (for tests and logs)

    async def acquire(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._sem.acquire()

    def release(self) -> None:
        self._sem.release()

    @contextmanager
    def slow(self) -> Iterator[None]:
        """Around a call that may block for long (a graceful shutdown): the slot is free meanwhile,
        and taken again (waiting for one, like any reconcile) before the reconcile goes on."""
        loop = self._loop
        if loop is None or not loop.is_running():
            yield
            return
        loop.call_soon_threadsafe(self._sem.release)
        self.slow_now += 1
        try:
            yield
        finally:
            self.slow_now -= 1
            taken = asyncio.run_coroutine_threadsafe(self._sem.acquire(), loop)
            while loop.is_running():  # not forever when the agent stops meanwhile
                try:
                    taken.result(timeout=1.0)
                    break
                except concurrent.futures.TimeoutError:
                    continue
