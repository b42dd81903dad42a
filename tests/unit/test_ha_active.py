"""Which replica is active, read from Kopf's peering object, and what the admission webhook of a
standby does about it: its Kopf indexes are paused with its handlers, so it asks the API."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from failovervm.controller import admission, tenancy
from failovervm.controller.context import ControllerContext, ControllerSettings
from failovervm.controller.ha import ActiveCheck, is_active
from tests.fakes import FakeKube

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def _peer(priority: int, seconds_ago: float, lifetime: int = 10) -> dict[str, Any]:
    seen = NOW - dt.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_the_live_peer_of_highest_priority_is_active() -> None:
    status = {"a": _peer(300, 1), "b": _peer(200, 1)}
    assert is_active(status, 300, NOW) and not is_active(status, 200, NOW)
    # The other one died (its entry outlived its lifetime): the standby takes over.
    assert is_active({"a": _peer(300, 11), "b": _peer(200, 1)}, 200, NOW)
    # Not registered yet, or no peering object at all: not active.
    assert not is_active({"a": _peer(300, 1)}, 100, NOW) and not is_active(None, 100, NOW)
    assert not is_active({"a": {"priority": 5}}, 5, NOW)  # malformed entries count as dead


def test_active_check_reads_the_peering_object_at_most_once_per_ttl() -> None:
    reads: list[int] = []

    def read() -> dict[str, Any]:
        reads.append(1)
        return {"status": {"me": {"priority": 7, "lifetime": 60, "lastseen": dt.datetime.now(dt.UTC).isoformat()}}}

    check = ActiveCheck(read, 7, ttl=60)
    assert check() and check() and len(reads) == 1

    def broken() -> dict[str, Any]:
        raise OSError("apiserver down")

    assert not ActiveCheck(broken, 7)()  # unknown: ask the API rather than trust paused indexes


def _vm(name: str, mac: str) -> dict[str, Any]:
    return {"apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVM",
            "metadata": {"name": name, "namespace": "t", "uid": f"uid-{name}"},
            "spec": {"memoryMiB": 64, "vcpus": 1, "disks": [], "network": {"pool": "p", "mac": mac}}}


def test_a_standby_checks_mac_uniqueness_against_the_api_not_its_paused_indexes() -> None:
    kube = FakeKube()
    kube.add_pool({"metadata": {"name": "p"}, "spec": {}})
    kube.add_vm(_vm("first", "52:54:00:00:00:01"))
    ctx = ControllerContext(ControllerSettings(), kube)
    # The standby's indexes: empty (paused before they were filled).
    ctx.tenancy.bind({n: {} for n in (tenancy.POOLS, tenancy.NAMESPACES, tenancy.MACS)})
    body = _vm("second", "52:54:00:00:00:01")
    ctx.tenancy.active = lambda: False
    errors = asyncio.run(admission.validate_failovervm(ctx, body, "CREATE", None))
    assert any("52:54:00:00:00:01" in e for e in errors), errors


def test_a_standby_reads_a_pool_and_a_namespace_once_per_ttl(monkeypatch: Any) -> None:
    """Admission on a standby asks the API for the pool and the namespace, but a burst of creates
    (30/s in the scale benchmark) costs one read of each per READ_TTL_SECONDS, not two per VM."""
    kube = FakeKube()
    kube.add_pool({"metadata": {"name": "p"}, "spec": {}})
    ctx = ControllerContext(ControllerSettings(), kube)
    ctx.tenancy.bind({n: {} for n in (tenancy.POOLS, tenancy.NAMESPACES, tenancy.MACS)})
    ctx.tenancy.active = lambda: False
    clock = [100.0]
    monkeypatch.setattr(tenancy.time, "monotonic", lambda: clock[0])
    for _ in range(3):
        assert ctx.tenancy.pool("p") is not None and ctx.tenancy.namespace_labels("ns") == {}
    assert len(kube.calls_of("get_pool")) == 1 and len(kube.calls_of("get_namespace")) == 1
    clock[0] += tenancy.READ_TTL_SECONDS
    ctx.tenancy.pool("p")
    assert len(kube.calls_of("get_pool")) == 2


def _unreachable() -> Any:
    from failovervm import kubeclient
    return kubeclient.ApiClient(kubeclient.Configuration(host="http://127.0.0.1:1"))


def test_the_standby_mac_watch_keeps_the_macs_of_every_vm_by_pool() -> None:
    watch = tenancy.MacWatch(_unreachable())
    other_pool = _vm("elsewhere", "52:54:00:00:00:01")
    other_pool["spec"]["network"]["pool"] = "q"
    recorded = _vm("recorded", "")  # a generated MAC: in status.mac only
    del recorded["spec"]["network"]["mac"]
    recorded["status"] = {"mac": "52:54:00:00:00:02"}
    watch.reset([_vm("first", "52:54:00:00:00:01"), other_pool, recorded])
    assert len(watch) == 3
    assert [h["metadata"]["name"] for h in watch.holders("p", "52:54:00:00:00:01")] == ["first"]
    assert [h["metadata"]["name"] for h in watch.holders("q", "52:54:00:00:00:01")] == ["elsewhere"]
    assert [h["metadata"]["uid"] for h in watch.holders("p", "52:54:00:00:00:02")] == ["uid-recorded"]
    # An edit moves the MAC; a deletion frees it; a new VM is found.
    watch.see("MODIFIED", _vm("first", "52:54:00:00:00:03"))
    assert watch.holders("p", "52:54:00:00:00:01") == []
    assert [h["metadata"]["name"] for h in watch.holders("p", "52:54:00:00:00:03")] == ["first"]
    watch.see("DELETED", recorded)
    watch.see("ADDED", _vm("second", "52:54:00:00:00:04"))
    assert watch.holders("p", "52:54:00:00:00:02") == [] and len(watch) == 3
    # What admission's duplicate check reads of a holder names the VM and the MAC.
    from failovervm.validation import vm_macs
    holder = watch.holders("p", "52:54:00:00:00:04")[0]
    assert holder["metadata"] == {"uid": "uid-second", "namespace": "t", "name": "second"}
    assert vm_macs(holder) == {"52:54:00:00:00:04"}
    watch.reset([])  # a fresh LIST forgets the rest
    assert len(watch) == 0 and watch.holders("p", "52:54:00:00:00:04") == []


def test_a_synced_standby_answers_the_mac_check_from_its_watch_without_a_list() -> None:
    kube = FakeKube()
    kube.add_pool({"metadata": {"name": "p"}, "spec": {}})
    ctx = ControllerContext(ControllerSettings(), kube)
    ctx.tenancy.bind({n: {} for n in (tenancy.POOLS, tenancy.NAMESPACES, tenancy.MACS)})
    ctx.tenancy.active = lambda: False
    watch = tenancy.MacWatch(_unreachable())
    watch.reset([_vm("first", "52:54:00:00:00:01")])
    watch._synced.set()
    watch.start = lambda: watch  # type: ignore[method-assign]  # no thread: already "synced"
    ctx.tenancy.standby_macs = lambda: watch
    errors = asyncio.run(admission.validate_failovervm(ctx, _vm("second", "52:54:00:00:00:01"), "CREATE", None))
    assert any("52:54:00:00:00:01 is already used" in e for e in errors), errors
    assert asyncio.run(admission.validate_failovervm(ctx, _vm("third", "52:54:00:00:00:09"), "CREATE", None)) == []
    assert kube.calls_of("list_vms") == []
    # Not in sync (restarting after an error): the API answers meanwhile.
    watch._synced.clear()
    asyncio.run(admission.validate_failovervm(ctx, _vm("fourth", "52:54:00:00:00:01"), "CREATE", None))
    assert len(kube.calls_of("list_vms")) == 1
    # Active: the indexes answer, and the watch is stopped with what it kept.
    ctx.tenancy.active = lambda: True
    ctx.tenancy.mac_holders("p", "52:54:00:00:00:01")
    assert watch._stopped.is_set() and ctx.tenancy._mac_watch is None


def test_a_fresh_list_is_read_a_page_at_a_time_while_the_old_state_answers() -> None:
    watch = tenancy.MacWatch(_unreachable())
    watch.reset([_vm("old", "52:54:00:00:00:01")])
    seen_midway: list[list[str]] = []

    def pages() -> Any:
        yield _vm("new", "52:54:00:00:00:02")
        seen_midway.append([h["metadata"]["name"] for h in watch.holders("p", "52:54:00:00:00:01")])
        yield _vm("newer", "52:54:00:00:00:03")

    watch.reset(pages())
    assert seen_midway == [["old"]]  # the old state answered while the LIST was read
    assert watch.holders("p", "52:54:00:00:00:01") == [] and len(watch) == 2
