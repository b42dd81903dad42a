"""controller.ha.KeepAlive: the peering entry renewed from a thread of its own while the event loop
runs (issue #12's scale runs: a busy loop made the active replica look dead to the standby)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

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


def peering(status: dict[str, Any]) -> dict[str, Any]:
    """The peering object a renewal's PATCH answers with (the API server merges every entry)."""
    return {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "status": status}


class Api:
    """The peering object in the API server: merges each renewal, or fails while `down`."""

    def __init__(self, others: dict[str, Any] | None = None) -> None:
        self.status: dict[str, Any] = dict(others or {})
        self.down = False

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise ConnectionRefusedError("the API server is out of reach")
        self.status.update(body["status"])
        return peering(self.status)


def test_the_active_replica_stands_down_when_it_cannot_renew_before_the_deadline() -> None:
    api, clock, reasons = Api(), Clock(), []
    keep = ha.KeepAlive(api, "ctl-a", priority=7, lifetime=10, clock=clock, stand_down=reasons.append)
    assert keep.deadline == 7.0 == ha.renew_deadline(10)  # 3 s before the standby may resume
    assert keep.renew() and keep.active  # alone: the answer says it is the active one
    api.down = True
    for _ in range(2):  # two renewals fail (every 2.5 s): not yet
        clock.now += 2.5
        keep.tick()
        try:
            keep.renew()
        except ConnectionRefusedError:
            pass
        assert not keep.check()
    clock.now += 2.1  # 7.1 s since the entry was last stamped
    keep.tick()
    assert keep.check() and len(reasons) == 1
    assert "ctl-a could not renew its peering entry for 7.1 s" in reasons[0]
    assert "stuck" not in reasons[0]
    assert keep.stopped.is_set() and not keep.check()  # once; and the renewals end with it
    api.down = False
    assert not keep.renew()


def test_a_stuck_loop_makes_the_active_replica_stand_down_a_standby_never() -> None:
    clock, reasons = Clock(), []
    higher = {"ctl-old": ha.peer_entry(9, 10)}  # an older replica: this one stands by
    standby = ha.KeepAlive(Api(higher), "ctl-b", priority=7, lifetime=10, clock=clock, stand_down=reasons.append)
    active = ha.KeepAlive(Api(), "ctl-a", priority=8, lifetime=10, clock=clock, stand_down=reasons.append)
    assert standby.renew() and not standby.active
    assert active.renew() and active.active
    clock.now += 5.1  # neither loop ticked since: neither renews
    assert not standby.renew() and not active.renew()
    clock.now += 2.0
    assert not standby.check() and active.check()
    assert len(reasons) == 1 and "ctl-a" in reasons[0] and "its event loop is stuck" in reasons[0]
    clock.now += 60  # a standby cut off for a minute still does nothing: it is not acting
    assert not standby.check()


def test_a_renewal_that_got_through_resets_the_deadline_and_a_clean_stop_disarms_it() -> None:
    api, clock, reasons = Api(), Clock(), []
    keep = ha.KeepAlive(api, "ctl-a", priority=7, lifetime=10, clock=clock, stand_down=reasons.append)
    for _ in range(10):  # a minute of renewals, each 6.9 s after the last: never overdue
        keep.tick()
        assert keep.renew()
        clock.now += 6.9
        assert not keep.check()
    keep.stopped.set()  # stop() on a clean exit: the entry is removed, nothing to stand down from
    clock.now += 60
    assert not keep.check() and reasons == []


def test_the_watchdog_thread_stands_down_while_a_renewal_hangs() -> None:
    import threading

    release, done = threading.Event(), threading.Event()
    calls: list[dict[str, Any]] = []

    def patch(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        if len(calls) > 1 and body["status"]["ctl-a"] is not None:
            release.wait(10)  # the second renewal hangs in the API call
        return peering(body["status"])

    reasons: list[str] = []
    keep = ha.KeepAlive(patch, "ctl-a", priority=7, lifetime=10, interval=0.05, deadline=0.3,
                        stand_down=lambda r: (reasons.append(r), done.set()))
    assert keep.renew() and keep.active
    keep.start()
    try:
        assert done.wait(5), "no stand-down while the renewal hung"
        assert len(reasons) == 1
    finally:
        release.set()
        keep.stop()


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


def test_a_lifetime_too_short_for_a_renew_deadline_is_refused_with_the_flag_named(
        capsys: pytest.CaptureFixture[str]) -> None:
    from failovervm.cli import build_parser

    args = ["controller", "--storage-root", "/srv", "--peering-lifetime"]
    assert build_parser().parse_args([*args, "6"]).peering_lifetime == 6
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, "5"])
    assert "--peering-lifetime: must be at least 6 s" in capsys.readouterr().err
    assert ha.renew_deadline(ha.MIN_PEERING_LIFETIME) == 3.0
