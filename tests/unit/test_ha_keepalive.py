"""controller.ha.KeepAlive: the peering entry renewed from a thread of its own while the event loop
runs (issue #12's scale runs: a busy loop made the active replica look dead to the standby)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from failovervm.controller import ha


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_renews_while_the_loop_ticks_and_stops_when_it_is_stuck() -> None:
    sent: list[dict[str, Any]] = []
    clock = Clock()
    keep = ha.KeepAlive(sent.append, "ctl@host/1", priority=7, lifetime=10, clock=clock)
    assert keep.interval == 2.5
    assert keep.renew()
    entry = sent[-1]["status"]["ctl@host/1"]
    assert entry["priority"] == 7 and entry["lifetime"] == 10
    seen = dt.datetime.fromisoformat(entry["lastseen"])
    assert abs((dt.datetime.now(dt.UTC) - seen).total_seconds()) < 5
    # The status keeps the replica active for Kopf's rules (ha.is_active reads the same fields).
    assert ha.is_active(sent[-1]["status"], 7)
    clock.now += 5  # the loop last ticked 5 s ago: half the lifetime, still alive
    assert keep.renew()
    clock.now += 0.1  # longer than that: stuck, the standby must be able to take over
    assert not keep.renew() and len(sent) == 2
    keep.tick()
    assert keep.renew() and len(sent) == 3


def test_stop_removes_the_entry_and_ends_renewals() -> None:
    sent: list[dict[str, Any]] = []
    keep = ha.KeepAlive(sent.append, "ctl@host/1", priority=7, lifetime=10, interval=0.01)
    keep.start()
    keep.stop()
    assert sent[-1] == {"status": {"ctl@host/1": None}}
    count = len(sent)
    assert not keep.renew() and len(sent) == count


def test_identity_is_the_pod_name_when_given() -> None:
    assert ha.own_identity({"POD_ID": "failovervm-controller-abc"}) == "failovervm-controller-abc"
    made = ha.own_identity({})
    assert "@" in made and made.count("/") == 2
