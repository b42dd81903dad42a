"""Issue #12: the controller acts from its watch caches (controller.cache), so its cost per VM does
not grow with the number of VMs, nodes or claims. On FakeKube, with the indexes as Kopf keeps them
(`FakeKube.live_indexes`): what is answered without an API call, what is still asked, and that a
stale cache never allocates a VF twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from failovervm import labels
from failovervm.controller import admission, cache, sweeps, tenancy, vmpods, vms
from failovervm.controller.context import ControllerContext
from tests.fakes import FakeKube
from tests.fakes.kube import node
from tests.unit.test_placement_latency import LiveIndex

NS = "tenant"
VFS = ["0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2"]


def vm_obj(name: str, mac: str | None = None) -> dict[str, Any]:
    net: dict[str, Any] = {"pool": "pool"}
    if mac:
        net["mac"] = mac
    return {"metadata": {"name": name, "namespace": NS, "managedFields": [{"manager": "kubectl"}]},
            "spec": {"running": True, "cpu": 1, "memory": "128Mi", "network": net}}


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    for n in ("n1", "n2"):
        k.add_node(node(n, labels={"sriov": "true"}))
    k.add_pool({"metadata": {"name": "pool"}, "spec": {"nodeSelector": {"sriov": "true"}}})
    for n in ("n1", "n2"):
        k.add_inventory_pool(n, "pool", [{"pciAddress": a, "pf": "pf0"} for a in VFS])
    return k


@pytest.fixture
def ctx(kube: FakeKube, controller_ctx: Callable[..., ControllerContext]) -> ControllerContext:
    c = controller_ctx(kube)
    c.pods = vmpods.IndexedPods(LiveIndex(kube))
    c.cache = cache.IndexedCache(kube.live_indexes())
    return c


def methods(kube: FakeKube) -> list[str]:
    return [c.method for c in kube.calls]


def place(kube: FakeKube, ctx: ControllerContext, name: str, node_name: str) -> str:
    """The controller's pass (pod created), kube-scheduler's binding, the controller's pass on it."""
    vms.ensure_scheduled(ctx, NS, name)
    uid = kube.vms[NS, name]["metadata"]["uid"]
    [pod] = [p for p in kube.pods.values() if p["metadata"]["labels"][labels.VM_UID_LABEL] == uid]
    bound = kube.bind_pod(NS, pod["metadata"]["name"], node_name)
    return vms.on_running_pod_event(ctx, "MODIFIED", bound)


def test_the_indexes_keep_only_what_the_controller_reads(kube: FakeKube) -> None:
    vm = kube.add_vm(vm_obj("a", mac="52:54:00:00:00:01"))
    kube.nodes["n1"]["metadata"]["managedFields"] = [{"manager": "kubelet"}]
    kube.nodes["n1"]["status"]["images"] = [{"names": ["big"], "sizeBytes": 1}]
    idx = kube.indexes()
    [summary] = idx[cache.VMS][("uid", vm["metadata"]["uid"])]
    assert "managedFields" not in summary["metadata"] and summary["metadata"]["name"] == "a"
    # Admission's MACs per pool are keys of the same index, to the same summary (one object).
    [by_mac] = idx[cache.VMS][cache.mac_key("pool", "52:54:00:00:00:01")]
    assert by_mac is summary
    [n1] = idx[cache.NODES]["n1"]
    assert "managedFields" not in n1["metadata"] and "images" not in n1["status"]
    assert cache.inventory_summary(kube.inventories["n1"])["pools"]["pool"]["vfs"] == {a: "pf0" for a in VFS}
    # The pool keeps totals; VF lists of an earlier version's status are dropped from the cache.
    legacy = {"metadata": {"name": "p"}, "status": {"nodes": [{"node": "n1", "vfs": [{"pciAddress": VFS[0]}]}]}}
    summary_p = cache.pool_summary(legacy)
    assert "nodes" not in summary_p["status"] and summary_p["legacyNodes"] is True


def test_claims_are_found_by_node_and_pool_and_by_owner(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj("a"))
    assert place(kube, ctx, "a", "n1") == "placed:n1"
    uid = kube.vms[NS, "a"]["metadata"]["uid"]
    [mine] = ctx.cache.claims_of(uid)
    assert ctx.cache.claims_on("n1", "pool") == [mine] and ctx.cache.claims_on("n2", "pool") == []
    assert mine["spec"]["owner"]["uid"] == uid and set(mine["metadata"]) <= {"name", "uid", "creationTimestamp"}


def test_placing_many_vms_costs_the_same_api_calls_per_vm(kube: FakeKube, ctx: ControllerContext) -> None:
    """The binding pass of the 1st and of the 5th VM make the same calls: none is a LIST, none
    reads the pool, the node or its inventory."""
    per_vm = []
    for i in range(5):
        kube.add_vm(vm_obj(f"vm{i}"))
        vms.ensure_scheduled(ctx, NS, f"vm{i}")
        uid = kube.vms[NS, f"vm{i}"]["metadata"]["uid"]
        [pod] = [p for p in kube.pods.values() if p["metadata"]["labels"][labels.VM_UID_LABEL] == uid]
        bound = kube.bind_pod(NS, pod["metadata"]["name"], "n1" if i < 3 else "n2")
        kube.calls.clear()
        assert vms.on_running_pod_event(ctx, "MODIFIED", bound).startswith("placed:")
        per_vm.append(methods(kube))
    assert all(m == per_vm[0] for m in per_vm), per_vm
    assert not [m for m in per_vm[0] if m.startswith("list_") or m in ("get_pool", "get_node", "get_inventory")]
    claimed = [(c["spec"]["node"], c["spec"]["pciAddress"]) for c in kube.claims.values()]
    assert len(claimed) == len(set(claimed)) == 5


def test_the_first_pass_of_a_new_vm_lists_nothing(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj("a"))
    kube.calls.clear()
    writes = kube._version
    assert vms.ensure_scheduled(ctx, NS, "a") == "pending:WaitingForScheduler"
    # The second status update compares with the copy just written: no request.
    assert methods(kube) == ["get_vm", "update_vm_status", "create_pod", "update_vm_status"]
    assert kube._version - writes == 2  # Pending written once, the pod created


def test_a_stale_cache_never_allocates_a_vf_twice(kube: FakeKube, ctx: ControllerContext) -> None:
    """The cache has not seen two claims on n1 yet: each costs an AlreadyExists and the next VF is
    taken; when it shows none free, a consistent LIST has the last word."""
    kube.add_vm(vm_obj("a"))
    frozen = kube.indexes()  # the cache as it was before the other claims
    for pci in VFS[:2]:
        kube.create_claim({"metadata": {"name": f"n1.{pci.replace(':', '-').replace('.', '-')}", "labels": {
            labels.VM_NODE: "n1", f"{labels.PREFIX}/pool": "pool"}}, "spec": {
            "node": "n1", "pool": "pool", "pciAddress": pci, "owner": {"uid": "other"}}})
    vms.ensure_scheduled(ctx, NS, "a")
    ctx.cache = cache.IndexedCache({**kube.live_indexes(), cache.CLAIMS: frozen[cache.CLAIMS]})
    [pod] = kube.pods.values()
    assert vms.on_running_pod_event(ctx, "MODIFIED", kube.bind_pod(NS, pod["metadata"]["name"], "n1")) == "placed:n1"
    assert kube.vms[NS, "a"]["status"]["vf"]["pciAddress"] == VFS[2]
    assert methods(kube).count("create_claim") == 5  # 2 test claims, 2 AlreadyExists, the VM's
    assert "list_claims" not in methods(kube)


def _tenancy_indexes(kube: FakeKube, pools: bool = True) -> dict[str, dict[Any, list[dict[str, Any]]]]:
    """Admission's indexes (controller.tenancy) as Kopf would hold them for the objects stored now."""
    out: dict[str, dict[Any, list[dict[str, Any]]]] = {tenancy.POOLS: {}, tenancy.NAMESPACES: {}, tenancy.MACS: {}}
    for name, pool in kube.pools.items() if pools else ():
        out[tenancy.POOLS].setdefault(name, []).append(cache.pool_summary(pool))
    for vm in kube.vms.values():
        for key, ref in cache.vm_keys(vm).items():  # the MACs are keys of the VM index
            out[tenancy.MACS].setdefault(key, []).append(ref)
    return out


def test_admission_answers_from_the_caches(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj("a", mac="52:54:00:00:00:01"))
    ctx.tenancy.indexes = _tenancy_indexes(kube)
    kube.calls.clear()
    dup = vm_obj("b", mac="52:54:00:00:00:01")
    errors = admission._validate_vm_sync(ctx, dup)
    assert errors == [f"spec.network.mac: 52:54:00:00:00:01 is already used in VFPool 'pool' by FailoverVM {NS}/a"]
    assert admission._validate_vm_sync(ctx, vm_obj("c", mac="52:54:00:00:00:02")) == []
    assert kube.calls == []
    # A refusal for a pool the cache does not know is confirmed by the API (the indexes may still be
    # filling after a restart: admission does not wait for them).
    missing = {**vm_obj("d"), "spec": {"network": {"pool": "nope"}}}
    assert admission._validate_vm_sync(ctx, missing) == ["spec.network.pool: VFPool 'nope' does not exist"]
    assert kube.calls_of("get_pool") == [("nope",)]
    kube.add_pool({"metadata": {"name": "late"}, "spec": {}})
    ctx.tenancy.indexes = _tenancy_indexes(kube, pools=False)
    assert admission._validate_vm_sync(ctx, {**vm_obj("e"), "spec": {"network": {"pool": "late"}}}) == []


def test_the_node_sweep_passes_only_over_nodes_that_need_it(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj("a"))
    place(kube, ctx, "a", "n1")
    assert sweeps.sweep_nodes(ctx) == ["n1", "n2"]  # the first sweep: every node (a resync)
    kube.calls.clear()
    assert sweeps.sweep_nodes(ctx) == [] and kube.calls == []  # nothing to do: no API call
    # n1 goes NotReady: its VM gets NodeHealthy=False, then nothing more while that holds.
    kube.nodes["n1"]["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "KubeletDown"}]
    assert sweeps.sweep_nodes(ctx) == ["n1"]
    assert [c["status"] for c in kube.vms[NS, "a"]["status"]["conditions"] if c["type"] == "NodeHealthy"] == ["False"]
    kube.calls.clear()
    assert sweeps.sweep_nodes(ctx) == [] and kube.calls == []
    # n2 is cordoned: it needs evacuation passes, and one more after the uncordon.
    kube.nodes["n2"]["spec"]["unschedulable"] = True
    assert "n2" in sweeps.sweep_nodes(ctx)
    del kube.nodes["n2"]["spec"]["unschedulable"]
    assert "n2" in sweeps.sweep_nodes(ctx)
    assert "n2" not in sweeps.sweep_nodes(ctx)


def test_pending_vms_are_woken_by_capacity_not_by_a_timer_each(kube: FakeKube, ctx: ControllerContext) -> None:
    """One pending sweep over the cache's unplaced VMs answers in memory: a VM waiting for
    kube-scheduler, or for capacity that did not change, costs no pass; a capacity change wakes it."""
    kube.add_vm(vm_obj("a"))
    vms.ensure_scheduled(ctx, NS, "a")
    assert not vms.needs_look(ctx, kube.vms[NS, "a"])  # its pod waits for kube-scheduler
    # A VM whose pool does not exist yet waits for capacity.
    kube.add_vm({**vm_obj("b"), "spec": {**vm_obj("b")["spec"], "network": {"pool": "later"}}})
    assert not vms.needs_look(ctx, kube.vms[NS, "b"])  # just created: its creation event passes it
    kube.vms[NS, "b"]["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    assert vms.needs_look(ctx, kube.vms[NS, "b"])  # ... unless that did not happen
    assert vms.ensure_scheduled(ctx, NS, "b") == "pending:NoMatchingNode"
    assert not vms.needs_look(ctx, kube.vms[NS, "b"])
    kube.calls.clear()
    assert vms.wake_pending(ctx) == [] and kube.calls == []  # nothing to do: no API call
    ctx.capacity.changed()  # e.g. the pool was created (controller.main's VFPool event)
    assert vms.needs_look(ctx, kube.vms[NS, "b"])
    assert vms.wake_pending(ctx) == [f"{NS}/b"]
    assert [v["metadata"]["name"] for v in ctx.cache.pending_vms()] == ["a", "b"]
    # A Node's heartbeat is no capacity change; a cordon or a new allocatable is.
    summary = cache.node_summary(kube.nodes["n1"])
    assert ctx.capacity.object_changed("node/n1", cache.node_fingerprint(summary))
    kube.nodes["n1"]["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-11-29T20:00:00Z"
    assert not ctx.capacity.object_changed("node/n1", cache.node_fingerprint(cache.node_summary(kube.nodes["n1"])))
    kube.nodes["n1"]["spec"]["unschedulable"] = True
    assert ctx.capacity.object_changed("node/n1", cache.node_fingerprint(cache.node_summary(kube.nodes["n1"])))


def test_pool_totals_are_written_only_when_they_change(kube: FakeKube, ctx: ControllerContext) -> None:
    vms.refresh_pool_status(ctx, "pool")
    status = kube.pools["pool"]["status"]
    assert status["totals"] == {"total": 6, "allocated": 0, "free": 6} and status["nodeCount"] == 2
    version = kube.pools["pool"]["metadata"]["resourceVersion"]
    kube.calls.clear()
    vms.refresh_pool_status(ctx, "pool")
    # Unchanged: compared with the cached copy, nothing read, nothing written.
    assert kube.calls_of("get_pool") == [] and kube.pools["pool"]["metadata"]["resourceVersion"] == version
    kube.add_vm(vm_obj("a"))
    place(kube, ctx, "a", "n2")
    kube.calls.clear()
    vms.refresh_pool_status(ctx, "pool")
    assert methods(kube) == ["update_pool_status"] and kube.pools["pool"]["metadata"]["resourceVersion"] != version
    assert kube.pools["pool"]["status"]["totals"] == {"total": 6, "allocated": 1, "free": 5}


def test_an_old_pool_status_with_vf_lists_is_cleaned(kube: FakeKube, ctx: ControllerContext) -> None:
    """Upgrade: a VFPool status an earlier version filled with every node's VFs is ignored for
    placement and dropped by the controller's next count."""
    kube.pools["pool"]["status"] = {"nodes": [{"node": "n9", "vfs": [{"pciAddress": VFS[0]}]}]}
    vms.refresh_pool_status(ctx, "pool")
    assert "nodes" not in kube.pools["pool"]["status"]
    assert kube.pools["pool"]["status"]["totals"]["total"] == 6


def test_orphaned_claims_are_found_in_the_cache_and_confirmed(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj("a"))
    place(kube, ctx, "a", "n1")
    kube.add_claim({"metadata": {"name": "gone", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {
        "node": "n2", "pool": "pool", "pciAddress": VFS[0], "owner": {"namespace": NS, "name": "x", "uid": "u"}}})
    for c in kube.claims.values():
        c["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    kube.calls.clear()
    assert vms.collect_orphaned_claims(ctx) == ["gone"]
    assert methods(kube) == ["get_vm", "delete_claim"]  # only the orphan's VM is read


def test_placements_on_one_node_do_not_collide_while_the_claim_cache_lags(kube: FakeKube,
                                                                          ctx: ControllerContext) -> None:
    """The claim cache has not seen the claims just made (their watch events come later): the VFs
    this controller claimed lately are not tried again, so no AlreadyExists is paid for them."""
    frozen = kube.indexes()[cache.CLAIMS]  # the cache before any of these claims
    ctx.cache = cache.IndexedCache({**kube.live_indexes(), cache.CLAIMS: frozen})
    for i in range(3):
        kube.add_vm(vm_obj(f"v{i}"))
        assert place(kube, ctx, f"v{i}", "n1") == "placed:n1"
    assert methods(kube).count("create_claim") == 3
    assert sorted(c["spec"]["pciAddress"] for c in kube.claims.values()) == VFS
    # Full: the cache and the recent claims say none is free; the consistent LIST agrees.
    kube.add_vm(vm_obj("v3"))
    assert place(kube, ctx, "v3", "n1") == "pending:NoFreeVF"


def test_the_controller_limits_malloc_arenas() -> None:
    """Memory (#12): the controller caps glibc's per-thread malloc arenas before its threads start."""
    from failovervm import malloc

    assert malloc.limit_arenas() is True
    malloc.trim()  # returns whether memory was released: either is fine


def test_vms_are_placed_in_parallel_and_each_vm_one_pass_at_a_time(kube: FakeKube, ctx: ControllerContext) -> None:
    """No global placement lock: passes of different VMs run at once (a VF's claim create is its
    lock), those of one VM under its stripe; 8 VMs placed from 8 threads on one node of 3+3 VFs get
    distinct VFs, and the others wait."""
    import threading

    from failovervm.controller.locks import Locks

    assert ctx.locks.vm(NS, "a") is ctx.locks.vm(NS, "a")
    assert len({id(ctx.locks.vm(NS, f"vm{i}")) for i in range(1000)}) == Locks.VM_STRIPES
    for i in range(8):
        kube.add_vm(vm_obj(f"p{i}"))
        vms.ensure_scheduled(ctx, NS, f"p{i}")
    bound = []
    for i, pod in enumerate(sorted(kube.pods.values(), key=lambda p: p["metadata"]["name"])):
        bound.append(kube.bind_pod(NS, pod["metadata"]["name"], "n1" if i % 2 else "n2"))
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda p=p: outcomes.append(vms.on_running_pod_event(ctx, "MODIFIED", p)))
               for p in bound]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count("placed:n1") == 3 and sorted(outcomes).count("placed:n2") == 3
    claimed = [(c["spec"]["node"], c["spec"]["pciAddress"]) for c in kube.claims.values()]
    assert len(claimed) == len(set(claimed)) == 6


def test_a_claim_left_by_a_pass_that_died_is_replaced_not_recorded_after_its_release(
        kube: FakeKube, ctx: ControllerContext) -> None:
    """#13 x #12 (the crash matrix's placement.after-claim): the controller died after claiming a VF
    and before recording it. The next pass releases the VM's stale claims first; the cache still
    shows the released one for a moment, and the VF choice must not take it up again (the VM would
    record a claim that no longer exists). It claims afresh, and the VM holds exactly that claim."""
    kube.add_vm(vm_obj("a"))
    vms.ensure_scheduled(ctx, NS, "a")
    uid = kube.vms[NS, "a"]["metadata"]["uid"]
    [pod] = kube.pods.values()
    kube.bind_pod(NS, pod["metadata"]["name"], "n1")
    # The dead pass's claim: made, never recorded.
    kube.create_claim({"metadata": {"name": "n1.0000-3b-02-0", "labels": {
        labels.VM_NODE: "n1", f"{labels.PREFIX}/pool": "pool", labels.VM_UID_LABEL: uid}}, "spec": {
        "node": "n1", "pool": "pool", "pciAddress": VFS[0], "purpose": "Running",
        "owner": {"namespace": NS, "name": "a", "uid": uid}}})
    frozen = kube.indexes()  # the cache before it sees the release
    ctx.cache = cache.IndexedCache({**kube.live_indexes(), cache.CLAIMS: frozen[cache.CLAIMS]})
    assert vms.ensure_scheduled(ctx, NS, "a") == "placed:n1"
    recorded = kube.vms[NS, "a"]["status"]["vf"]["claimName"]
    assert [c["metadata"]["name"] for c in kube.claims.values()
            if c["spec"]["owner"]["uid"] == uid] == [recorded]
