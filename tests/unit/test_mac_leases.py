"""MAC leases (failovervm.macleases, controller.leases): a MAC is used by one VM per pool even when
two VMs with it were admitted at the same moment. The lease's create is the lock; the loser waits
(Pending, MACConflict, an Event), and is placed once the holder is deleted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from failovervm import labels, macleases
from failovervm.controller import cache, leases, vms
from failovervm.controller.cache import IndexedCache
from failovervm.controller.context import ControllerContext
from failovervm.kube import ApiException
from tests.fakes import FakeKube
from tests.fakes.kube import node
from tests.unit.test_placement_latency import indexed_ctx

MAC = "52:54:00:aa:bb:cc"
RANGE = {"first": "52:54:00:10:00:00", "last": "52:54:00:10:00:03"}


def vm(ns: str, name: str, pool: str = "pool", mac: str | None = MAC) -> dict[str, Any]:
    network: dict[str, Any] = {"pool": pool}
    if mac:
        network["mac"] = mac
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"running": True, "cpu": 1, "memory": "128Mi", "network": network}}


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    for n in ("n1", "n2"):
        k.add_node(node(n, labels={"sriov": "true"}))
    vfs = {"nodes": [{"node": n, "vfs": [{"pciAddress": "0000:3b:02.0", "pf": "pf0"}]} for n in ("n1", "n2")]}
    k.add_pool({"metadata": {"name": "pool"}, "spec": {"nodeSelector": {"sriov": "true"}}, "status": vfs})
    k.add_pool({"metadata": {"name": "ranged"}, "spec": {"nodeSelector": {"sriov": "true"}, "macRange": RANGE},
                "status": vfs})
    return k


@pytest.fixture
def ctx(kube: FakeKube, controller_ctx: Callable[..., ControllerContext]) -> ControllerContext:
    return indexed_ctx(kube, controller_ctx)


def status(kube: FakeKube, ns: str, name: str) -> dict[str, Any]:
    return kube.vms[ns, name].get("status") or {}


def scheduled(kube: FakeKube, ns: str, name: str) -> dict[str, Any]:
    [cond] = [c for c in status(kube, ns, name)["conditions"] if c["type"] == "Scheduled"]
    return cond


def test_the_first_vm_leases_its_mac_and_the_second_waits(kube: FakeKube, ctx: ControllerContext) -> None:
    # Both admitted (neither cache showed the other yet); the first pass to lease wins.
    kube.add_vm(vm("a", "first"))
    kube.add_vm(vm("a", "second"))
    assert vms.ensure_scheduled(ctx, "a", "first") == "pending:WaitingForScheduler"
    lease = kube.mac_leases[macleases.lease_name("pool", MAC)]
    assert lease["spec"]["owner"]["name"] == "first" and lease["spec"]["mac"] == MAC
    assert vms.ensure_scheduled(ctx, "a", "second") == "pending:MACConflict"
    cond = scheduled(kube, "a", "second")
    assert (cond["status"], cond["reason"]) == ("False", "MACConflict")
    assert f"spec.network.mac {MAC} is leased in VFPool 'pool' to FailoverVM a/first" in cond["message"]
    assert "mac" not in status(kube, "a", "second")  # never a MAC it could not lease
    # The loser holds no pod and no VF; one Warning Event says why.
    first_uid = kube.vms["a", "first"]["metadata"]["uid"]
    assert [p["metadata"]["labels"][labels.VM_UID_LABEL] for p in kube.pods.values()] == [first_uid]
    assert [(e.reason, e.type) for e in kube.events if e.name == "second"] == [("MACConflict", "Warning")]


def test_another_tenants_holder_is_not_named(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm("a", "first"))
    kube.add_vm(vm("b", "other"))
    vms.ensure_scheduled(ctx, "a", "first")
    vms.ensure_scheduled(ctx, "b", "other")
    message = scheduled(kube, "b", "other")["message"]
    assert "a FailoverVM of another namespace" in message and "first" not in message


def test_a_held_lease_costs_no_request_on_later_passes(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm("a", "first"))
    vms.ensure_scheduled(ctx, "a", "first")
    kube.calls.clear()
    pod = next(iter(kube.pods.values()))
    bound = kube.bind_pod("a", pod["metadata"]["name"], "n1")
    assert vms.on_running_pod_event(ctx, "MODIFIED", bound) == "placed:n1"
    assert not [c for c in kube.calls if "mac_lease" in c.method]


def test_the_deleted_holders_lease_goes_and_the_waiting_vm_is_placed(kube: FakeKube,
                                                                      ctx: ControllerContext) -> None:
    kube.add_vm(vm("a", "first"))
    kube.add_vm(vm("a", "second"))
    vms.ensure_scheduled(ctx, "a", "first")
    first_uid = kube.vms["a", "first"]["metadata"]["uid"]
    assert vms.ensure_scheduled(ctx, "a", "second") == "pending:MACConflict"
    del kube.vms["a", "first"]
    assert leases.release_mac_leases(ctx, first_uid) == [macleases.lease_name("pool", MAC)]
    assert not kube.mac_leases
    assert vms.ensure_scheduled(ctx, "a", "second") == "pending:WaitingForScheduler"
    lease = kube.mac_leases[macleases.lease_name("pool", MAC)]
    assert lease["spec"]["owner"]["uid"] == kube.vms["a", "second"]["metadata"]["uid"]


def test_a_lease_whose_holder_is_gone_is_taken_over(kube: FakeKube, ctx: ControllerContext) -> None:
    """The holder was deleted while no controller released its lease (and the sweep has not run):
    the API, not a cache, says it is gone; then the lease changes hands."""
    kube.add_vm(vm("a", "first"))
    vms.ensure_scheduled(ctx, "a", "first")
    del kube.vms["a", "first"]
    kube.add_vm(vm("a", "first"))  # recreated under the same name: another UID
    assert vms.ensure_scheduled(ctx, "a", "first") == "pending:WaitingForScheduler"
    lease = kube.mac_leases[macleases.lease_name("pool", MAC)]
    assert lease["spec"]["owner"]["uid"] == kube.vms["a", "first"]["metadata"]["uid"]


def test_a_lease_is_never_taken_from_a_live_vm_the_cache_does_not_show(kube: FakeKube,
                                                                       ctx: ControllerContext) -> None:
    kube.add_vm(vm("a", "first"))
    vms.ensure_scheduled(ctx, "a", "first")
    kube.add_vm(vm("a", "second"))
    ctx.cache = IndexedCache({**kube.indexes(), cache.VMS: {}})  # no VM in the cache at all
    assert vms.ensure_scheduled(ctx, "a", "second") == "pending:MACConflict"
    assert kube.mac_leases[macleases.lease_name("pool", MAC)]["spec"]["owner"]["name"] == "first"


def test_a_generated_mac_of_a_range_leased_meanwhile_is_replaced(kube: FakeKube, ctx: ControllerContext) -> None:
    """Another replica (or a VM the cache does not show yet) leased the MAC this VM's UID gives:
    the VM takes the next free one of the range, never the leased one."""
    kube.add_vm(vm("a", "gen", pool="ranged", mac=None))
    uid = kube.vms["a", "gen"]["metadata"]["uid"]
    from failovervm.tenancy import mac_range

    rng = mac_range(kube.pools["ranged"])
    assert rng is not None
    taken = rng.generate(uid)
    kube.create_mac_lease(macleases.lease_body(vm("x", "ghost") | {"metadata": {
        "name": "ghost", "namespace": "x", "uid": "ghost-uid"}}, "ranged", taken))
    kube.add_vm({**vm("x", "ghost", pool="ranged", mac=None),
                 "metadata": {"name": "ghost", "namespace": "x", "uid": "ghost-uid"}})
    assert vms.ensure_scheduled(ctx, "a", "gen") == "pending:WaitingForScheduler"
    mac = status(kube, "a", "gen")["mac"]
    assert mac != taken and kube.mac_leases[macleases.lease_name("ranged", mac)]["spec"]["owner"]["uid"] == uid


def test_a_vm_without_explicit_mac_or_range_leases_nothing(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm("a", "plain", mac=None))
    vms.ensure_scheduled(ctx, "a", "plain")
    assert not kube.mac_leases and not [c for c in kube.calls if "mac_lease" in c.method]


def test_without_the_crd_placement_goes_on_and_warns_once(kube: FakeKube, ctx: ControllerContext,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    kube.add_vm(vm("a", "first"))
    kube.add_vm(vm("a", "second", mac="52:54:00:aa:bb:cd"))
    kube.fail("create_mac_lease", ApiException(404, "Not Found"), ApiException(404, "Not Found"))
    assert vms.ensure_scheduled(ctx, "a", "first") == "pending:WaitingForScheduler"
    assert vms.ensure_scheduled(ctx, "a", "second") == "pending:WaitingForScheduler"
    assert ctx.mac_leases_missing
    assert sum("MACLease CRD" in r.getMessage() for r in caplog.records) == 1


def test_the_sweep_releases_leases_of_vms_gone_or_using_another_mac(kube: FakeKube,
                                                                    ctx: ControllerContext) -> None:
    kube.add_vm(vm("a", "gone"))
    kube.add_vm(vm("a", "changed", mac="52:54:00:aa:bb:01"))
    kube.add_vm(vm("a", "kept", mac="52:54:00:aa:bb:02"))
    for name in ("gone", "changed", "kept"):
        vms.ensure_scheduled(ctx, "a", name)
    assert len(kube.mac_leases) == 3
    del kube.vms["a", "gone"]
    kube.patch_vm("a", "changed", {"spec": {"network": {"mac": "52:54:00:aa:bb:03"}}})
    kube.vms["a", "changed"]["status"]["mac"] = "52:54:00:aa:bb:03"  # as its next status write records it
    for lease in kube.mac_leases.values():  # older than the grace
        lease["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    released = leases.collect_orphaned_mac_leases(ctx)
    assert sorted(released) == sorted([macleases.lease_name("pool", MAC),
                                       macleases.lease_name("pool", "52:54:00:aa:bb:01")])
    assert list(kube.mac_leases) == [macleases.lease_name("pool", "52:54:00:aa:bb:02")]


def test_a_fresh_lease_is_left_to_its_vm_by_the_sweep(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm("a", "first"))
    vms.ensure_scheduled(ctx, "a", "first")
    del kube.vms["a", "first"]
    assert leases.collect_orphaned_mac_leases(ctx) == []  # within the grace: its VM may not be cached yet


def test_a_lease_changing_hands_under_the_pass_makes_it_wait_not_fail(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm("a", "first"))
    other = macleases.lease_body({"metadata": {"namespace": "b", "name": "x", "uid": "x-uid"}}, "pool", MAC)

    def appear() -> None:
        kube.mac_leases[other["metadata"]["name"]] = {**other, "metadata": {**other["metadata"], "uid": "l"}}

    kube.before("create_mac_lease", appear, appear)
    kube.before("get_mac_lease", kube.mac_leases.clear, kube.mac_leases.clear)
    assert vms.ensure_scheduled(ctx, "a", "first") == "pending:MACConflict"
    assert "leased in VFPool 'pool' to another FailoverVM" in scheduled(kube, "a", "first")["message"]
    # The next pass takes it.
    assert vms.ensure_scheduled(ctx, "a", "first") == "pending:WaitingForScheduler"
