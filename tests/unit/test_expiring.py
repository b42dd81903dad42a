"""failovervm.expiring: what the controller remembers for a while, at a cost per call that does not
grow with how much it remembers (issue #12: the Event deduplication rebuilt its whole memory on
every Event once a busy run kept it over its size)."""

from __future__ import annotations

import time

from failovervm.expiring import ExpiringKeys
from failovervm.placement import RecentClaims


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keys_expire_after_ttl_and_the_oldest_go_first_over_the_limit() -> None:
    clock = Clock()
    keys = ExpiringKeys(ttl=10, limit=3, clock=clock)
    keys.add("a")
    clock.now = 5
    keys.add("b")
    assert "a" in keys and "b" in keys
    clock.now = 10
    assert "a" not in keys and "b" in keys
    keys.add("c")
    keys.add("d")
    keys.add("e")  # over the limit: b, the oldest, goes
    assert list(keys) == ["c", "d", "e"] and "b" not in keys
    keys.add("c")  # set again: the newest now
    keys.add("f")
    assert list(keys) == ["e", "c", "f"]
    keys.discard("c")
    assert list(keys) == ["e", "f"] and len(keys) == 2


def test_a_call_costs_the_same_with_many_keys_kept() -> None:
    """100,000 keys within their ttl and at the limit: adding one more is as cheap as with few."""
    def per_add(kept: int) -> float:
        keys = ExpiringKeys(ttl=300, limit=kept)
        for i in range(kept):
            keys.add(i)
        t = time.perf_counter()
        for i in range(kept, kept + 2000):
            keys.add(i)
            assert i in keys
        return (time.perf_counter() - t) / 2000

    assert per_add(100_000) < 20 * per_add(100) + 20e-6


def test_recent_claims_are_kept_per_node() -> None:
    recent = RecentClaims(ttl=30)
    recent.add("n1", "0000:3b:02.0")
    recent.add("n2", "0000:3b:02.1")
    assert recent.on("n1") == {("n1", "0000:3b:02.0")}
    decision = recent.pick("n1", "pool", ["0000:3b:02.0", "0000:3b:02.2"])
    assert getattr(decision, "pci_address", None) == "0000:3b:02.2"
    assert recent.on("n1") == {("n1", "0000:3b:02.0"), ("n1", "0000:3b:02.2")}
    assert recent.on("n3") == set()
