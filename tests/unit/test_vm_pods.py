"""The controller places VMs through their pods (kube-scheduler binds them), keeps a pod on every
placed VM's node, and reserves migration targets through target pods: all on FakeKube, with the
test standing in for kube-scheduler (bind_pod, pod_unschedulable)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from failovervm import conditions, labels, vmpod
from failovervm import migration as mg
from failovervm.controller import migrations, vmpods, vms
from failovervm.controller.context import ControllerContext
from failovervm.kube import ApiException
from tests.fakes import FakeKube
from tests.fakes.kube import node

NS = "tenant"


def pool_obj(vfs: dict[str, list[str]]) -> dict[str, Any]:
    return {"metadata": {"name": "pool"}, "spec": {"nodeSelector": {"sriov": "true"}},
            "status": {"nodes": [{"node": n, "vfs": [{"pciAddress": a, "pf": "pf0"} for a in addrs]}
                                 for n, addrs in vfs.items()]}}


def vm_obj(name: str = "vm", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "labels": {"app": "db"}},
            "spec": {"running": True, "cpu": 1, "memory": "128Mi", "network": {"pool": "pool"}, **spec}}


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    for n in ("n1", "n2", "n3"):
        k.add_node(node(n, labels={"sriov": "true", "kubernetes.io/hostname": n}))
    k.add_pool(pool_obj({"n1": ["0000:3b:02.0", "0000:3b:02.1"], "n2": ["0000:3b:02.0"], "n3": ["0000:3b:02.0"]}))
    return k


@pytest.fixture
def ctx(kube: FakeKube, controller_ctx: Callable[..., ControllerContext]) -> ControllerContext:
    return controller_ctx(kube)


def vm_pods(kube: FakeKube, role: str | None = None) -> list[dict[str, Any]]:
    return [p for p in kube.pods.values() if labels.VM_UID_LABEL in (p["metadata"].get("labels") or {})
            and (role is None or p["metadata"]["labels"][labels.ROLE_LABEL] == role)]


def scheduled(kube: FakeKube, name: str = "vm") -> dict[str, Any]:
    cond = conditions.get(kube.vms[NS, name]["status"].get("conditions"), "Scheduled")
    assert cond is not None
    return cond


def refusal(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="Forbidden")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


def place(kube: FakeKube, ctx: ControllerContext, node_name: str, name: str = "vm") -> str:
    """Create the VM's pod, let "kube-scheduler" bind it to `node_name`, place the VM."""
    vms.ensure_scheduled(ctx, NS, name)
    pod = next(p for p in vm_pods(kube, "running") if p["metadata"]["labels"][labels.VM_LABEL] == name)
    kube.bind_pod(NS, pod["metadata"]["name"], node_name)
    return vms.ensure_scheduled(ctx, NS, name)


# -- placement through kube-scheduler ------------------------------------------------------------------
def test_a_vm_that_should_run_gets_an_unbound_pod_and_waits_for_kube_scheduler(kube: FakeKube,
                                                                                 ctx: ControllerContext) -> None:
    vm = kube.add_vm(vm_obj())
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:WaitingForScheduler"
    [pod] = vm_pods(kube)
    expected = vmpod.build(vm, kube.pools["pool"], ctx.settings.vm_pod)
    assert pod["spec"] == expected["spec"] and "nodeName" not in pod["spec"]
    assert pod["metadata"]["name"] == expected["metadata"]["name"]
    assert pod["spec"]["nodeSelector"] == {"sriov": "true"}  # the pool's nodeSelector
    assert kube.vms[NS, "vm"]["status"]["phase"] == "Pending" and "nodeName" not in kube.vms[NS, "vm"]["status"]
    cond = scheduled(kube)
    assert (cond["status"], cond["reason"]) == ("False", "WaitingForScheduler") and pod["metadata"]["name"] in \
        cond["message"]
    assert not kube.claims
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:WaitingForScheduler"
    assert len(vm_pods(kube)) == 1  # the same pod, never a second one


def test_an_unschedulable_pod_makes_the_vm_pending_with_kube_schedulers_message(kube: FakeKube,
                                                                                  ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj(nodeSelector={"zone": "nowhere"}))
    vms.ensure_scheduled(ctx, NS, "vm")
    [pod] = vm_pods(kube)
    message = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    kube.pod_unschedulable(NS, pod["metadata"]["name"], message)
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:Unschedulable"
    cond = scheduled(kube)
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "Unschedulable", message)
    assert kube.vms[NS, "vm"]["status"]["phase"] == "Pending"
    vms.ensure_scheduled(ctx, NS, "vm")
    assert [(e.reason, e.note) for e in kube.events if e.type == "Warning"] == [("FailedScheduling", message)]


def test_once_bound_the_vm_gets_a_free_vf_on_that_node(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj())
    kube.create_claim({"metadata": {"name": "n1.0000-3b-02-0"}, "spec": {
        "node": "n1", "pciAddress": "0000:3b:02.0", "owner": {"uid": "other"}}})
    assert place(kube, ctx, "n1") == "placed:n1"
    vm = kube.vms[NS, "vm"]
    assert vm["status"]["nodeName"] == "n1" and vm["status"]["vf"]["pciAddress"] == "0000:3b:02.1"
    assert vm["status"]["phase"] == "Scheduled" and scheduled(kube)["status"] == "True"
    assert vm["metadata"]["labels"][labels.VM_NODE] == "n1" and labels.AGENT_FINALIZER in vm["metadata"]["finalizers"]
    assert kube.claims["n1.0000-3b-02-1"]["spec"]["owner"]["uid"] == vm["metadata"]["uid"]
    assert "Scheduled" in kube.reasons()
    # Placed: the pod on its node is its running pod; nothing else happens.
    assert vms.ensure_scheduled(ctx, NS, "vm") == "ok"
    assert [vmpod.node_of(p) for p in vm_pods(kube)] == ["n1"]


def test_bound_where_no_vf_is_free_the_pod_goes_and_kube_scheduler_chooses_again(
        kube: FakeKube, ctx: ControllerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    kube.add_vm(vm_obj())
    kube.create_claim({"metadata": {"name": "n2.0000-3b-02-0"}, "spec": {
        "node": "n2", "pciAddress": "0000:3b:02.0", "owner": {"uid": "other"}}})
    assert place(kube, ctx, "n2") == "pending:NoFreeVF"
    assert not vm_pods(kube) and scheduled(kube)["message"] == "node n2 has no free VF in pool pool"
    assert "nodeName" not in kube.vms[NS, "vm"]["status"]
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:NoFreeVF"  # backing off: no pod yet
    assert not vm_pods(kube)
    monkeypatch.setattr(vmpods.time, "monotonic", lambda: 1e12)  # the back-off is over
    assert place(kube, ctx, "n3") == "placed:n3"


def test_a_pod_the_api_server_refuses_shows_on_the_vm_and_is_retried_with_backoff(
        kube: FakeKube, ctx: ControllerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    kube.add_vm(vm_obj())
    quota = ('pods "fvm-vm-1" is forbidden: exceeded quota: vms, requested: requests.memory=288Mi, used: '
             "requests.memory=0, limited: requests.memory=256Mi")
    kube.fail("create_pod", refusal(403, quota))
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:PodRejected"
    cond = scheduled(kube)
    assert (cond["reason"], cond["message"]) == ("PodRejected", quota)
    assert ("PodRejected", quota) in [(e.reason, e.note) for e in kube.events if e.type == "Warning"]
    kube.fail("create_pod", refusal(403, quota))  # would refuse again, but nothing asks within the back-off
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:PodRejected" and not vm_pods(kube)
    monkeypatch.setattr(vmpods.time, "monotonic", lambda: 1e12)
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:PodRejected"  # refused once more
    monkeypatch.setattr(vmpods.time, "monotonic", lambda: 2e12)
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:WaitingForScheduler" and len(vm_pods(kube)) == 1


def test_a_changed_spec_retries_a_refused_pod_at_once(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj(memory="8Gi"))
    kube.fail("create_pod", refusal(403, "exceeded quota"))
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:PodRejected"
    kube.patch_vm(NS, "vm", {"spec": {"memory": "128Mi"}})
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:WaitingForScheduler"


def test_a_stopped_vm_that_was_never_placed_has_no_pod(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj())
    vms.ensure_scheduled(ctx, NS, "vm")
    assert len(vm_pods(kube)) == 1
    kube.patch_vm(NS, "vm", {"spec": {"running": False}})
    assert vms.ensure_scheduled(ctx, NS, "vm") == "not-running"
    assert not vm_pods(kube) and kube.vms[NS, "vm"]["status"]["phase"] == "Stopped"


def test_a_stale_index_never_makes_a_second_pod(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_vm(vm_obj())
    ctx.pods = vmpods.IndexedPods({})  # the watch has not delivered the pod yet
    vms.ensure_scheduled(ctx, NS, "vm")
    vms.ensure_scheduled(ctx, NS, "vm")
    assert len(vm_pods(kube)) == 1


# -- a placed VM always has its pod on its node --------------------------------------------------------
def running_vm(kube: FakeKube, node_name: str = "n1", name: str = "vm", **spec: Any) -> dict[str, Any]:
    """A VM placed and running on `node_name` by a version without VM pods."""
    vm = kube.add_vm(vm_obj(name, **spec))
    kube.update_vm_status(NS, name, lambda st: {**st, "phase": "Running", "nodeName": node_name, "vf": {
        "node": node_name, "pciAddress": "0000:3b:02.0", "claimName": f"{node_name}.0000-3b-02-0"}})
    return vm


def test_upgrade_creates_the_pod_of_a_running_vm_bound_to_its_node(kube: FakeKube, ctx: ControllerContext) -> None:
    vm = running_vm(kube)
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "created"
    [pod] = vm_pods(kube)
    assert pod["spec"]["nodeName"] == "n1" and pod["metadata"]["name"] == vmpod.pod_name(vm)
    assert "nodeSelector" not in pod["spec"] and "affinity" not in pod["spec"]
    assert kube.vms[NS, "vm"]["status"]["phase"] == "Running"  # the VM was not touched
    assert "VMPodCreated" in kube.reasons()
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "ok"
    assert vms.sweep_pods(ctx) == [] and len(vm_pods(kube)) == 1


def test_the_sweep_gives_every_running_vm_its_pod(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube, "n1", "a")
    running_vm(kube, "n2", "b")
    kube.add_vm(vm_obj("c", running=False))  # never placed: nothing
    assert sorted(vms.sweep_pods(ctx)) == [f"{NS}/a:created", f"{NS}/b:created"]
    assert sorted(vmpod.node_of(p) or "" for p in vm_pods(kube)) == ["n1", "n2"]


def test_a_pod_deleted_out_of_band_is_recreated_bound_and_the_vm_keeps_running(kube: FakeKube,
                                                                                ctx: ControllerContext) -> None:
    running_vm(kube)
    vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"])
    [pod] = vm_pods(kube)
    kube.delete_pod(NS, pod["metadata"]["name"])  # kubectl delete pod --force
    assert vms.on_running_pod_event(ctx, "DELETED", pod) == "created"
    [again] = vm_pods(kube)
    assert again["spec"]["nodeName"] == "n1" and again["metadata"]["uid"] != pod["metadata"]["uid"]
    assert kube.vms[NS, "vm"]["status"]["nodeName"] == "n1"


def test_a_failed_pod_is_replaced(kube: FakeKube, ctx: ControllerContext) -> None:
    """A kubelet eviction leaves the pod Failed: it no longer holds anything."""
    running_vm(kube)
    vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"])
    [pod] = vm_pods(kube)
    kube.pods[NS, pod["metadata"]["name"]]["status"] = {"phase": "Failed", "reason": "Evicted"}
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "created"
    [again] = vm_pods(kube)
    assert again["status"]["phase"] == "Pending" and again["spec"]["nodeName"] == "n1"


def test_a_vm_being_shut_down_for_a_drain_gets_no_new_pod(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube)
    kube.patch_vm(NS, "vm", {"metadata": {"annotations": {labels.EVICT_ANNOTATION: "n1"}}})
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "evicting" and not vm_pods(kube)


def test_a_refused_recreation_leaves_the_vm_running_and_warns(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube)
    kube.fail("create_pod", refusal(403, "exceeded quota: vms"))
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "rejected"
    assert kube.vms[NS, "vm"]["status"]["phase"] == "Running" and "VMPodRejected" in kube.reasons()
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "waiting"


@pytest.mark.parametrize("indexed", [False, True])
def test_a_pod_from_before_the_vm_was_released_is_not_its_next_placement(kube: FakeKube, ctx: ControllerContext,
                                                                          indexed: bool) -> None:
    """evictionStrategy Shutdown: the agent released the VM from n1 (Scheduled=False). The pod that
    stood for that placement must not place it on n1 again."""
    running_vm(kube)
    vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"])
    [old] = vm_pods(kube)
    kube.pods[NS, old["metadata"]["name"]]["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"

    def release(st: dict[str, Any]) -> dict[str, Any]:
        for key in ("nodeName", "vf"):
            st.pop(key)
        st["phase"] = "Pending"
        st["conditions"] = conditions.set_condition(st.get("conditions"), "Scheduled", False, "Evicted", "evicted")
        return st

    kube.update_vm_status(NS, "vm", release)
    if indexed:  # what Kopf's index keeps of the pod
        old_pod = vmpod.summary(kube.pods[NS, old["metadata"]["name"]])
        ctx.pods = vmpods.IndexedPods({old["metadata"]["labels"][labels.VM_UID_LABEL]: [old_pod]})
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:WaitingForScheduler"
    [new] = vm_pods(kube)
    assert new["metadata"]["uid"] != old["metadata"]["uid"] and "nodeName" not in new["spec"]
    assert not kube.claims


# -- migration targets through kube-scheduler --------------------------------------------------------
def migrating_vm(kube: FakeKube, ctx: ControllerContext, target: str | None = None) -> dict[str, Any]:
    vm = running_vm(kube)
    kube.create_claim({"metadata": {"name": "n1.0000-3b-02-0"}, "spec": {
        "node": "n1", "pciAddress": "0000:3b:02.0", "purpose": "Running",
        "owner": {"namespace": NS, "name": "vm", "uid": vm["metadata"]["uid"]}}})
    vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"])
    spec = {"vmName": "vm", **({"targetNode": target} if target else {})}
    mig = kube.add_migration({"metadata": {"name": "m1", "namespace": NS}, "spec": spec})
    assert migrations.advance(ctx, NS, "m1") == mg.SCHEDULING
    return mig


def test_the_target_pod_keeps_off_the_source_and_waits_with_the_schedulers_message(
        kube: FakeKube, ctx: ControllerContext) -> None:
    mig = migrating_vm(kube, ctx)
    assert migrations.advance(ctx, NS, "m1") == mg.SCHEDULING
    [target] = vm_pods(kube, "target")
    assert target["metadata"]["name"] == vmpod.pod_name(kube.vms[NS, "vm"], mig)
    assert target["metadata"]["labels"][labels.MIGRATION_LABEL] == "m1"
    terms = target["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchFields": [
        {"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]}
    assert kube.migrations[NS, "m1"]["status"]["reason"] == "WaitingForScheduler"
    message = "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient memory."
    kube.pod_unschedulable(NS, target["metadata"]["name"], message)
    assert migrations.advance(ctx, NS, "m1") == mg.SCHEDULING
    st = kube.migrations[NS, "m1"]["status"]
    assert (st["reason"], st["message"]) == ("Unschedulable", message) and "NoTarget" in kube.reasons()
    assert not [c for c in kube.claims.values() if c["spec"].get("purpose") == "MigrationTarget"]


def target_reserved(kube: FakeKube, ctx: ControllerContext) -> dict[str, Any]:
    """A migration of the VM whose target pod kube-scheduler bound to n3, and whose target VF is
    reserved there (TargetReady). Returns the target pod as bound."""
    migrating_vm(kube, ctx)
    migrations.advance(ctx, NS, "m1")
    [target] = vm_pods(kube, "target")
    kube.bind_pod(NS, target["metadata"]["name"], "n3")
    assert migrations.advance(ctx, NS, "m1") == mg.TARGET_READY
    return target


def test_once_the_target_pod_is_bound_its_node_gets_the_target_vf(kube: FakeKube, ctx: ControllerContext) -> None:
    target_reserved(kube, ctx)
    st = kube.migrations[NS, "m1"]["status"]
    assert st["targetNode"] == "n3" and st["targetVF"] == {"pciAddress": "0000:3b:02.0",
                                                           "claimName": "n3.0000-3b-02-0"}
    lock = kube.vms[NS, "vm"]["status"]["migration"]
    assert (lock["state"], lock["targetNode"], lock["targetClaim"]) == (mg.TARGET_READY, "n3", "n3.0000-3b-02-0")


def test_a_pinned_migration_pins_its_target_pod(kube: FakeKube, ctx: ControllerContext) -> None:
    migrating_vm(kube, ctx, target="n2")
    migrations.advance(ctx, NS, "m1")
    [target] = vm_pods(kube, "target")
    terms = target["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"] == [
        {"key": "metadata.name", "operator": "In", "values": ["n2"]}]


def agent_succeeds(kube: FakeKube) -> None:
    """What the source agent writes when the domain runs on the target."""
    lock = kube.vms[NS, "vm"]["status"]["migration"]
    kube.update_vm_status(NS, "vm", lambda st: {**{k: v for k, v in st.items() if k != "migration"},
                                                "nodeName": lock["targetNode"], "phase": "Running"})
    kube.update_migration_status(NS, "m1", lambda st: {**st, "phase": mg.SUCCEEDED})


def test_after_success_the_target_pod_is_the_running_pod_and_the_source_pod_goes(
        kube: FakeKube, ctx: ControllerContext) -> None:
    target = target_reserved(kube, ctx)
    # While it runs, both pods hold their node; the VM's own sweep leaves them alone.
    kube.update_vm_status(NS, "vm", lambda st: {**st, "migration": {**st["migration"], "state": mg.RUNNING}})
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "ok" and len(vm_pods(kube)) == 2
    agent_succeeds(kube)
    assert migrations.advance(ctx, NS, "m1") == mg.SUCCEEDED
    [running] = vm_pods(kube)
    assert running["metadata"]["uid"] == target["metadata"]["uid"] and running["spec"]["nodeName"] == "n3"
    assert running["metadata"]["labels"][labels.ROLE_LABEL] == "running"
    assert labels.MIGRATION_LABEL not in running["metadata"]["labels"]


def test_the_vms_own_reconcile_may_settle_the_pods_first(kube: FakeKube, ctx: ControllerContext) -> None:
    """The agent moved status.nodeName (and dropped the lock) before the controller's cleanup ran."""
    target_reserved(kube, ctx)
    agent_succeeds(kube)
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "ok"
    [running] = vm_pods(kube)
    assert running["spec"]["nodeName"] == "n3" and vmpod.role_of(running) == "running"
    migrations.advance(ctx, NS, "m1")
    assert len(vm_pods(kube)) == 1


def test_after_a_failure_the_target_pod_goes(kube: FakeKube, ctx: ControllerContext) -> None:
    target_reserved(kube, ctx)
    kube.update_vm_status(NS, "vm", lambda st: {k: v for k, v in st.items() if k != "migration"})
    kube.update_migration_status(NS, "m1", lambda st: {**st, "phase": mg.FAILED})
    assert migrations.advance(ctx, NS, "m1") == mg.FAILED
    [running] = vm_pods(kube)
    assert running["spec"]["nodeName"] == "n1" and vmpod.role_of(running) == "running"
    assert "n3.0000-3b-02-0" not in kube.claims


def test_deleting_a_scheduling_migration_removes_its_target_pod(kube: FakeKube, ctx: ControllerContext) -> None:
    migrating_vm(kube, ctx)
    migrations.advance(ctx, NS, "m1")
    assert vm_pods(kube, "target")
    migrations.on_delete(ctx, NS, "m1")
    assert not vm_pods(kube, "target") and len(vm_pods(kube, "running")) == 1


def test_a_target_pod_that_outlived_its_migration_is_swept(kube: FakeKube, ctx: ControllerContext) -> None:
    migrating_vm(kube, ctx)
    migrations.advance(ctx, NS, "m1")
    [target] = vm_pods(kube, "target")
    del kube.migrations[NS, "m1"]  # gone before its cleanup ran
    kube.update_vm_status(NS, "vm", lambda st: {k: v for k, v in st.items() if k != "migration"})
    assert vms.sweep_pods(ctx) == [f"{NS}/{target['metadata']['name']}:deleted"]
    assert not vm_pods(kube, "target")


def test_a_target_pod_the_api_server_refuses_leaves_the_migration_scheduling(kube: FakeKube,
                                                                              ctx: ControllerContext) -> None:
    migrating_vm(kube, ctx)
    kube.fail("create_pod", refusal(403, "exceeded quota: vms, requested: vf.failovervm.io/pool=1"))
    assert migrations.advance(ctx, NS, "m1") == mg.SCHEDULING
    st = kube.migrations[NS, "m1"]["status"]
    assert st["reason"] == "PodRejected" and "exceeded quota" in st["message"]
    assert migrations.advance(ctx, NS, "m1") == mg.SCHEDULING and not vm_pods(kube, "target")  # backing off
