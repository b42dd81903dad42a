"""apply -> Running without the controller's own waits (issue #11's benchmark): events that find
nothing to do cost no API call, so no pass holds the placement lock when kube-scheduler's binding
arrives; the placing pass writes the VM's status from the copy it read (no GET before a write)
and lists the VFClaims once, from the API server's cache; a status write whose cached copy went
stale retries at once. On FakeKube, with the VM pod index in memory as Kopf's is."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from failovervm import kube as kube_mod
from failovervm import labels, vmpod
from failovervm.controller import vmpods, vms
from failovervm.controller.cache import IndexedCache, node_vfs
from failovervm.controller.context import ControllerContext
from failovervm.kube import ApiException
from tests.fakes import FakeKube
from tests.fakes.http import api_server
from tests.fakes.kube import node

NS = "tenant"


class LiveIndex(Mapping[str, list[dict[str, Any]]]):
    """The VM pods of a FakeKube by VM uid, read without API calls: what Kopf's index gives."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube

    def _all(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for pod in self.kube.pods.values():
            uid = (pod["metadata"].get("labels") or {}).get(labels.VM_UID_LABEL)
            if uid:
                out.setdefault(uid, []).append(vmpod.summary(pod))
        return out

    def __getitem__(self, uid: str) -> list[dict[str, Any]]:
        return self._all()[uid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    for n in ("n1", "n2"):
        k.add_node(node(n, labels={"sriov": "true"}))
    k.add_pool({"metadata": {"name": "pool"}, "spec": {"nodeSelector": {"sriov": "true"}},
                "status": {"nodes": [{"node": n, "vfs": [{"pciAddress": "0000:3b:02.0", "pf": "pf0"}]}
                                     for n in ("n1", "n2")]}})
    k.add_vm({"metadata": {"name": "vm", "namespace": NS},
              "spec": {"running": True, "cpu": 1, "memory": "128Mi", "network": {"pool": "pool"}}})
    return k


def indexed_ctx(kube: FakeKube, controller_ctx: Callable[..., ControllerContext]) -> ControllerContext:
    """A controller context reading the fake's objects through indexes, as Kopf's (no API call)."""
    c = controller_ctx(kube)
    c.pods = vmpods.IndexedPods(LiveIndex(kube))
    c.cache = IndexedCache(kube.live_indexes())
    return c


@pytest.fixture
def ctx(kube: FakeKube, controller_ctx: Callable[..., ControllerContext]) -> ControllerContext:
    return indexed_ctx(kube, controller_ctx)


def the_pod(kube: FakeKube) -> dict[str, Any]:
    [pod] = kube.pods.values()
    return pod


def methods(kube: FakeKube) -> list[str]:
    return [c.method for c in kube.calls]


def test_the_first_pass_writes_pending_and_creates_the_pod_without_reading_the_vm_again(
        kube: FakeKube, ctx: ControllerContext) -> None:
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:WaitingForScheduler"
    # One GET of the VM under the placement lock; the Pending status is written once, before the
    # pod exists, and not read back to find it already says so.
    assert methods(kube).count("get_vm") == 1
    assert methods(kube).count("create_pod") == 1 and methods(kube).count("update_vm_status") == 2
    status = kube.vms[NS, "vm"]["status"]
    assert status["phase"] == "Pending" and the_pod(kube)["metadata"]["name"] in status["conditions"][0]["message"]


def test_events_while_the_pod_waits_for_kube_scheduler_cost_no_api_call(kube: FakeKube,
                                                                         ctx: ControllerContext) -> None:
    vms.ensure_scheduled(ctx, NS, "vm")
    kube.calls.clear()
    # The VM's own status write and Kopf's finalizer come back as VM events; the pod's creation as a
    # pod event. None of them has anything to do: kube-scheduler's answer is the next event.
    assert vms.waiting_for_kube_scheduler(ctx, kube.vms[NS, "vm"])
    assert vms.on_running_pod_event(ctx, "ADDED", the_pod(kube)) == "waiting-for-kube-scheduler"
    assert kube.calls == []
    # kube-scheduler binds it: that event places the VM.
    bound = kube.bind_pod(NS, the_pod(kube)["metadata"]["name"], "n2")
    assert not vms.waiting_for_kube_scheduler(ctx, kube.vms[NS, "vm"])
    assert vms.on_running_pod_event(ctx, "MODIFIED", bound) == "placed:n2"


def test_what_still_needs_a_pass_gets_one(kube: FakeKube, ctx: ControllerContext) -> None:
    vms.ensure_scheduled(ctx, NS, "vm")
    name = the_pod(kube)["metadata"]["name"]
    # A changed spec (a new generation the status has not seen).
    changed = kube.patch_vm(NS, "vm", {"spec": {"cpu": 2}})
    assert not vms.waiting_for_kube_scheduler(ctx, changed)
    vms.ensure_scheduled(ctx, NS, "vm")
    assert vms.waiting_for_kube_scheduler(ctx, kube.vms[NS, "vm"])
    # Stopped, or deleted.
    assert not vms.waiting_for_kube_scheduler(ctx, {**kube.vms[NS, "vm"], "spec": {"running": False}})
    # kube-scheduler found no node: its message goes onto the VM.
    unschedulable = kube.pod_unschedulable(NS, name, "0/2 nodes are available: 2 Insufficient memory.")
    assert not vms.waiting_for_kube_scheduler(ctx, kube.vms[NS, "vm"])
    assert vms.on_running_pod_event(ctx, "MODIFIED", unschedulable) == "pending:Unschedulable"
    # The pod deleted while it waited: a new one.
    pod = kube.pods.pop((NS, name))
    assert vms.on_running_pod_event(ctx, "DELETED", pod) == "pending:WaitingForScheduler"
    assert len(kube.pods) == 1


def test_the_binding_pass_reads_nothing_and_lists_nothing(kube: FakeKube, ctx: ControllerContext) -> None:
    vms.ensure_scheduled(ctx, NS, "vm")
    bound = kube.bind_pod(NS, the_pod(kube)["metadata"]["name"], "n1")
    kube.calls.clear()
    assert vms.on_running_pod_event(ctx, "MODIFIED", bound) == "placed:n1"
    # The VM as the first pass's Pending write returned it (the VM cache shows that version: nobody
    # wrote it since); stale claims, the pool, the node, its VFs, the VF choice: the watch caches.
    assert methods(kube) == ["create_claim", "update_vm_status", "patch_vm"]
    vm = kube.vms[NS, "vm"]
    assert vm["status"]["vf"]["claimName"] in kube.claims
    # One patch: the node label, the agent's finalizer and Kopf's (no PATCH of Kopf's own).
    assert vm["metadata"]["labels"][labels.VM_NODE] == "n1"
    assert set(vm["metadata"]["finalizers"]) == {labels.AGENT_FINALIZER, labels.CONTROLLER_FINALIZER}


def test_the_binding_pass_reads_the_vm_when_the_cache_shows_a_newer_version(kube: FakeKube,
                                                                           ctx: ControllerContext) -> None:
    vms.ensure_scheduled(ctx, NS, "vm")
    bound = kube.bind_pod(NS, the_pod(kube)["metadata"]["name"], "n1")
    kube.patch_vm(NS, "vm", {"metadata": {"annotations": {"x": "y"}}})  # someone else wrote it since
    kube.calls.clear()
    assert vms.on_running_pod_event(ctx, "MODIFIED", bound) == "placed:n1"
    assert methods(kube) == ["get_vm", "create_claim", "update_vm_status", "patch_vm"]


def test_the_first_pass_of_a_new_vm_starts_from_its_event(kube: FakeKube, ctx: ControllerContext) -> None:
    event = dict(kube.vms[NS, "vm"])
    assert vms.ensure_scheduled(ctx, NS, "vm", hint=event) == "pending:WaitingForScheduler"
    assert methods(kube) == ["update_vm_status", "create_pod", "update_vm_status"]  # no GET (the 2nd: unchanged)
    # Until the pod index shows that pod, the VM's own status event costs nothing.
    kube.calls.clear()
    ctx.pods = vmpods.IndexedPods({})
    assert vms.waiting_for_kube_scheduler(ctx, kube.vms[NS, "vm"])
    assert not vms.needs_look(ctx, kube.vms[NS, "vm"])
    assert kube.calls == []


def test_a_stale_event_never_undoes_a_placement(kube: FakeKube, ctx: ControllerContext) -> None:
    """The event said "no status" but the VM was placed since: the Pending write's conflict reads it
    again, finds it placed, and the pass stops (no Pending, no pod)."""
    event = copy.deepcopy(kube.vms[NS, "vm"])
    kube.vms[NS, "vm"]["metadata"]["resourceVersion"] = str(int(event["metadata"]["resourceVersion"]) + 1)
    kube.vms[NS, "vm"]["status"] = {"phase": "Running", "nodeName": "n1"}
    assert vms.ensure_scheduled(ctx, NS, "vm", hint=event) == "placed-meanwhile"
    assert kube.vms[NS, "vm"]["status"] == {"phase": "Running", "nodeName": "n1"} and not kube.pods


def test_the_binding_pass_survives_a_write_landing_after_its_read(kube: FakeKube, ctx: ControllerContext) -> None:
    vms.ensure_scheduled(ctx, NS, "vm")
    bound = kube.bind_pod(NS, the_pod(kube)["metadata"]["name"], "n1")
    # Kopf adds its finalizer between the pass's GET and its status write: a 409, a GET, the write.
    kube.before("update_vm_status", lambda: kube.patch_vm(NS, "vm", {"metadata": {"finalizers": ["kopf"]}}))
    assert vms.on_running_pod_event(ctx, "MODIFIED", bound) == "placed:n1"
    vm = kube.vms[NS, "vm"]
    assert vm["status"]["phase"] == "Scheduled"
    assert set(vm["metadata"]["finalizers"]) == {"kopf", labels.AGENT_FINALIZER, labels.CONTROLLER_FINALIZER}


def test_the_vf_choice_starts_from_the_cache_and_checks_a_consistent_list_before_a_no(kube: FakeKube) -> None:
    from failovervm.placement import Claimed, claim_on_node

    vm, pool = kube.vms[NS, "vm"], kube.pools["pool"]
    cache = IndexedCache(kube.live_indexes())

    def claim(node: str, claims: list[dict[str, Any]]) -> object:
        return claim_on_node(kube, vm, pool, node, inventory=node_vfs(cache, node, "pool"), node_obj=cache.node(node),
                             claims=claims)

    assert isinstance(claim("n1", []), Claimed)
    assert kube.calls_of("list_claims") == []  # the caller's (cached) claims
    # The cache said n2's VF was free, but it was claimed since: AlreadyExists, then a consistent
    # list of n2's claims of the pool, which says no VF is free there.
    kube.calls.clear()
    kube.create_claim({"metadata": {"name": "n2.0000-3b-02-0", "labels": {
        labels.VM_NODE: "n2", f"{labels.PREFIX}/pool": "pool"}}, "spec": {
        "node": "n2", "pool": "pool", "pciAddress": "0000:3b:02.0", "owner": {"uid": "other"}}})
    result = claim("n2", [])
    assert not isinstance(result, Claimed) and result.reason == "NoFreeVF"
    assert kube.calls_of("list_claims") == [(False, f"{labels.VM_NODE}=n2,{labels.PREFIX}/pool=pool")]
    # The cache showed n2's VF claimed, but that claim was released since: a consistent list finds
    # it free before the VM is sent back to kube-scheduler.
    stale = list(kube.claims.values())
    kube.claims.clear()
    kube.calls.clear()
    result = claim("n2", stale)
    assert isinstance(result, Claimed) and result.node == "n2"
    assert len(kube.calls_of("list_claims")) == 1


def test_a_stale_copy_is_written_again_at_once_and_only_repeated_conflicts_back_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(kube_mod.time, "sleep", slept.append)
    stored = {"metadata": {"uid": "u", "resourceVersion": "2"}, "status": {}}
    conflicts = [0]  # how many of the next replaces answer 409

    def replace(obj: dict[str, Any]) -> dict[str, Any]:
        if conflicts[0]:
            conflicts[0] -= 1
            raise ApiException(status=409)
        return obj

    def write(n: int) -> dict[str, Any] | None:
        conflicts[0] = n
        stale = {"metadata": {"uid": "u", "resourceVersion": "1"}, "status": {}}
        return kube_mod.update_status(lambda: dict(stored), replace, lambda st: {**st, "phase": "Running"}, "vm",
                                      current=stale, uid="u")

    # The cached copy was stale (another writer's patch landed since): read and write again at once.
    written = write(1)
    assert written is not None and written["status"]["phase"] == "Running" and slept == []
    # Writers that keep colliding: from the second conflict in a row on, back off.
    write(3)
    assert slept == [0.05, 0.1]


def test_kube_lists_claims_from_the_api_servers_cache_only_when_asked() -> None:
    def respond(_method: str, _path: str) -> tuple[int, dict[str, Any]]:
        return 200, {"kind": "VFClaimList", "items": [{"metadata": {"name": "c"}}]}

    with api_server(respond) as (api, seen):
        kube = kube_mod.Kube(api)
        assert kube.list_claims() == [{"metadata": {"name": "c"}}]
        assert kube.list_claims(cached=True) == [{"metadata": {"name": "c"}}]
    assert [r["path"] for r in seen] == ["/apis/failovervm.io/v1alpha1/vfclaims",
                                         "/apis/failovervm.io/v1alpha1/vfclaims?resourceVersion=0"]


def test_parallel_passes_on_one_node_start_from_different_vfs() -> None:
    """The VF chosen is reserved at once (RecentClaims.pick): a second pass on the same node, whose
    cache does not show the first one's claim yet, takes the next VF instead of paying an
    AlreadyExists for the same one."""
    from failovervm.placement import RecentClaims
    from failovervm.scheduling import Placement

    recent = RecentClaims()
    free = ["0000:3b:02.1", "0000:3b:02.0", "0000:3b:02.2"]
    first, second = recent.pick("n1", "pool", free), recent.pick("n1", "pool", free)
    assert isinstance(first, Placement) and isinstance(second, Placement)
    assert (first.pci_address, second.pci_address) == ("0000:3b:02.0", "0000:3b:02.1")
    assert isinstance(recent.pick("n2", "pool", free), Placement)  # per node
    recent.pick("n1", "pool", free)
    assert recent.pick("n1", "pool", free).reason == "NoFreeVF"  # type: ignore[union-attr]


def test_a_vm_holds_kopfs_finalizer_once_placed_only() -> None:
    """Kopf puts no finalizer of its own on a new VM (the placement's patch adds it with the agent's);
    a VM with either finalizer waits for the controller's deletion handler."""
    from failovervm.controller.main import _holds_finalizers

    assert not _holds_finalizers(meta={"finalizers": []})
    assert _holds_finalizers(meta={"finalizers": [labels.AGENT_FINALIZER]})
    assert _holds_finalizers(meta={"finalizers": [labels.CONTROLLER_FINALIZER]})


def test_pod_events_that_need_nothing_are_answered_in_memory(kube: FakeKube, ctx: ControllerContext) -> None:
    """What the async pod handler answers on the event loop, without a thread or an API call: a pod
    not bound yet, and a bound pod whose VM the cache shows placed there with nothing to do (every
    pod when the controller starts). The binding of a VM not placed yet is work."""
    vms.ensure_scheduled(ctx, NS, "vm")
    assert vms.settled_pod_event(ctx, "ADDED", the_pod(kube)) == "waiting-for-kube-scheduler"
    bound = kube.bind_pod(NS, the_pod(kube)["metadata"]["name"], "n1")
    assert vms.settled_pod_event(ctx, "MODIFIED", bound) is None
    assert vms.on_running_pod_event(ctx, "MODIFIED", bound) == "placed:n1"
    kube.calls.clear()
    assert vms.settled_pod_event(ctx, "MODIFIED", the_pod(kube)) == "ok"
    assert vms.placed_and_settled(ctx, kube.vms[NS, "vm"])
    assert vms.settled_pod_event(ctx, "DELETED", the_pod(kube)) is None  # a deletion is always looked at
    assert kube.calls == []
