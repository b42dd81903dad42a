"""VMs count on their nodes (issue #11): every VM has a pod that kube-scheduler places, that quotas
count, that drains evict; installing over running VMs gives them pods without a restart. Driven
with kubectl, as a user would. Needs the sandbox's kube-scheduler and the agents' VF extended
resources (vf.failovervm.io/<pool>)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from failovervm.quantity import parse_quantity
from tests.conftest import Sandbox, make_namespace, restart_operator, stop_controllers, wait_for
from tests.e2e.helpers import apply, condition, events, get_vm, libvirt_conn, pool_manifest, vm_manifest, wait_phase

pytestmark = pytest.mark.e2e
POOL = "pods-pool"


def _vm_pods(sb: Sandbox, ns: str, vm: str | None = None) -> list[dict[str, Any]]:
    selector = f"failovervm.io/vm={vm}" if vm else "failovervm.io/vm-uid"
    return list(sb.kubectl_json("-n", ns, "get", "pods", "-l", selector)["items"])


def _scheduled(sb: Sandbox, ns: str, name: str, reason: str) -> dict[str, Any]:
    return wait_for(lambda: (c := condition(get_vm(sb, ns, name), "Scheduled")) and c["reason"] == reason and c,
                    60, what=f"{name}: Scheduled reason {reason}")


def test_a_vm_nothing_can_host_is_pending_with_kube_schedulers_message(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "nowhere")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("lost", ns, POOL, nodeSelector={"fvm-test/no": "x"}))
    cond = _scheduled(sb, ns, "lost", "Unschedulable")
    assert cond["status"] == "False" and "didn't match Pod's node affinity/selector" in cond["message"], cond
    assert get_vm(sb, ns, "lost")["status"]["phase"] == "Pending"
    [pod] = _vm_pods(sb, ns, "lost")
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")  # what cluster-autoscaler reads
    assert events(sb, ns, "FailedScheduling", "lost")
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_vm_anti_affinity_spreads_vms_over_nodes(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "spread")
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "spread"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    vms = [vm_manifest(f"s{i}", ns, POOL, affinity=anti) for i in range(2)]
    for vm in vms:
        vm["metadata"]["labels"] = {"app": "spread"}  # the VM's labels are its pod's
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), *vms)
    nodes = {wait_phase(sb, ns, f"s{i}", "Running")["status"]["nodeName"] for i in range(2)}
    assert len(nodes) == 2, nodes
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_a_quota_refuses_the_vm_that_exceeds_it(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "quota")
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "vms", "namespace": ns},
             "spec": {"hard": {"requests.memory": "512Mi", f"requests.vf.failovervm.io/{POOL}": "3"}}}
    sb.kubectl("apply", "-f", "-", input=json.dumps(quota))
    # 32Mi + 160Mi overhead = 192Mi per VM: two fit in 512Mi, the third does not.
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), *(vm_manifest(f"q{i}", ns, POOL) for i in range(2)))
    for i in range(2):
        wait_phase(sb, ns, f"q{i}", "Running")
    apply(sb, vm_manifest("q2", ns, POOL))
    cond = _scheduled(sb, ns, "q2", "PodRejected")
    assert "exceeded quota" in cond["message"] and "requests.memory" in cond["message"], cond
    assert get_vm(sb, ns, "q2")["status"]["phase"] == "Pending" and not _vm_pods(sb, ns, "q2")
    assert events(sb, ns, "PodRejected", "q2")
    # Room again (a VM deleted): the refused one is retried (with back-off) and runs.
    sb.kubectl("-n", ns, "delete", "fvm", "q0", "--timeout=60s")
    wait_phase(sb, ns, "q2", "Running", timeout=180)
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_a_quota_on_the_vf_resource_refuses_the_second_vm(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "vfquota")
    resource = f"requests.vf.failovervm.io/{POOL}"
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "one-vf", "namespace": ns},
             "spec": {"hard": {resource: "1"}}}
    sb.kubectl("apply", "-f", "-", input=json.dumps(quota))
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("v0", ns, POOL))
    wait_phase(sb, ns, "v0", "Running")
    apply(sb, vm_manifest("v1", ns, POOL))
    # The API server's own words, on the FailoverVM: which quota, which resource, how much is used.
    cond = _scheduled(sb, ns, "v1", "PodRejected")
    assert cond["status"] == "False", cond
    for words in ("exceeded quota: one-vf", f"requested: {resource}=1", f"used: {resource}=1",
                  f"limited: {resource}=1"):
        assert words in cond["message"], (words, cond)
    vm = get_vm(sb, ns, "v1")
    assert vm["status"]["phase"] == "Pending" and not _vm_pods(sb, ns, "v1")
    rejected = events(sb, ns, "PodRejected", "v1")
    assert rejected and all(e["type"] == "Warning" and "exceeded quota: one-vf" in e["message"] for e in rejected)
    shown = sb.kubectl("-n", ns, "describe", "fvm", "v1").stdout
    assert "exceeded quota: one-vf" in shown, shown
    # The quota raised: the refused VM is retried (after its back-off) and runs.
    sb.kubectl("-n", ns, "patch", "resourcequota", "one-vf", "--type=merge",
               "-p", json.dumps({"spec": {"hard": {resource: "2"}}}))
    wait_phase(sb, ns, "v1", "Running", timeout=180)
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def _bound_memory(sb: Sandbox, node: str) -> int:
    """The memory requests of the pods bound to `node` (what kube-scheduler counts against it)."""
    pods = sb.kubectl_json("get", "pods", "-A", "--field-selector", f"spec.nodeName={node}")["items"]
    return sum(parse_quantity((c.get("resources") or {}).get("requests", {}).get("memory", 0))
               for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")
               for c in p["spec"]["containers"])


@contextlib.contextmanager
def _node_memory(sb: Sandbox, node: str, free: str) -> Iterator[None]:
    """Make `node` advertise only `free` memory beyond what the pods bound there already request
    (its capacity and allocatable, in Node status: the sandbox's heartbeat writes only conditions),
    and restore what it advertised before afterwards."""
    before = sb.kubectl_json("get", "node", node)["status"]
    memory = str(_bound_memory(sb, node) + parse_quantity(free))

    def patch(capacity: str, allocatable: str) -> None:
        body = {"status": {"capacity": {"memory": capacity}, "allocatable": {"memory": allocatable}}}
        sb.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(body))

    patch(memory, memory)
    try:
        yield
    finally:
        patch(before["capacity"]["memory"], before["allocatable"]["memory"])


def _deployment(ns: str, name: str, node: str, memory: str, replicas: int) -> dict[str, Any]:
    """A plain Deployment whose pods request `memory` and may only go to `node`."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "nodeSelector": {"kubernetes.io/hostname": node},
                         "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                         "resources": {"requests": {"memory": memory}}}]}}}}


def _pod_scheduled(pod: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] == "PodScheduled"), {})


def _app_pods(sb: Sandbox, ns: str, app: str) -> list[dict[str, Any]]:
    return list(sb.kubectl_json("-n", ns, "get", "pods", "-l", f"app={app}")["items"])


def _unschedulable(pod: dict[str, Any], why: str) -> bool:
    cond = _pod_scheduled(pod)
    return (not pod["spec"].get("nodeName") and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable" and why in cond.get("message", ""))


def test_vms_and_pods_do_not_share_memory_on_a_node(operator_sandbox: Sandbox) -> None:
    """kube-scheduler counts VMs and pods against the same allocatable memory: a Deployment's pods
    are not placed onto memory a VM uses, and a VM is not placed onto memory pods use. The node is
    made small (1 GiB free) by patching its Node status, as a kubelet would report a small node."""
    sb = operator_sandbox
    ns = make_namespace(sb, "memory")
    node = sb.nodes[0]["node"]
    here = {"kubernetes.io/hostname": node}
    app = "eater"
    apply(sb, pool_manifest(POOL, sb.data["bridge"]))
    with _node_memory(sb, node, "1Gi"):
        try:
            # 512Mi + the controller's default overhead of 160Mi = 672Mi of the node's 1Gi.
            apply(sb, vm_manifest("vm1", ns, POOL, memory="512Mi", nodeSelector=here))
            assert wait_phase(sb, ns, "vm1", "Running")["status"]["nodeName"] == node
            [pod] = _vm_pods(sb, ns, "vm1")
            assert pod["spec"]["containers"][0]["resources"]["requests"]["memory"] == "672Mi"
            # Pods of 600Mi fit the node's 1Gi, but not next to the VM: none is placed there.
            sb.kubectl("apply", "-f", "-", input=json.dumps(_deployment(ns, app, node, "600Mi", 2)))
            pods = wait_for(lambda: len(p := _app_pods(sb, ns, app)) == 2
                            and all(_unschedulable(x, "Insufficient memory") for x in p) and p, 60,
                            what="the Deployment's pods Unschedulable for memory")
            message = _pod_scheduled(pods[0])["message"]
            assert "1 Insufficient memory" in message, message
            assert not [p for p in _app_pods(sb, ns, app) if p["spec"].get("nodeName")]
            # The VM is what held them off: once it is gone, one of them fits (two do not).
            sb.kubectl("-n", ns, "delete", "fvm", "vm1", "--timeout=60s")
            wait_for(lambda: [p["spec"].get("nodeName") for p in _app_pods(sb, ns, app)
                              if p["spec"].get("nodeName")] == [node], 60, what="one Deployment pod bound")
            # The reverse: a VM is not placed onto the memory the pod now uses. Pending, with
            # kube-scheduler's own message on the FailoverVM, and its pod Unschedulable.
            apply(sb, vm_manifest("vm2", ns, POOL, memory="512Mi", nodeSelector=here))
            cond = _scheduled(sb, ns, "vm2", "Unschedulable")
            assert cond["status"] == "False" and "Insufficient memory" in cond["message"], cond
            assert get_vm(sb, ns, "vm2")["status"]["phase"] == "Pending"
            [vm_pod] = _vm_pods(sb, ns, "vm2")
            assert _unschedulable(vm_pod, "Insufficient memory"), vm_pod["status"]
            assert events(sb, ns, "FailedScheduling", "vm2")
            # The pods gone, kube-scheduler binds the VM's pod there and the VM runs.
            sb.kubectl("-n", ns, "scale", "deployment", app, "--replicas=0")
            assert wait_phase(sb, ns, "vm2", "Running", timeout=90)["status"]["nodeName"] == node
        finally:
            # Bound pods never run (no kubelet): removed at once, before the node gets its memory back.
            sb.kubectl("-n", ns, "delete", "deployment", app, "--ignore-not-found", check=False)
            sb.kubectl("-n", ns, "delete", "pods", "-l", f"app={app}", "--grace-period=0", "--force",
                       "--ignore-not-found", check=False)
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_a_stopped_vm_with_a_forged_node_label_does_not_block_a_drain(operator_sandbox: Sandbox) -> None:
    """The issue's tenant: a stopped FailoverVM labelled failovervm.io/node=<node> made drain wait."""
    sb = operator_sandbox
    ns = make_namespace(sb, "forged")
    node = sb.nodes[-1]["node"]
    forged = vm_manifest("forged", ns, POOL, running=False)
    forged["metadata"]["labels"] = {"failovervm.io/node": node}
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), forged)
    wait_phase(sb, ns, "forged", "Stopped")
    assert not _vm_pods(sb, ns)
    try:
        res = sb.kubectl("drain", node, "--ignore-daemonsets", "--timeout=60s", timeout=90, check=False)
        assert res.returncode == 0, res.stderr
    finally:
        sb.kubectl("uncordon", node)
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_installing_over_running_vms_gives_them_pods_without_a_restart(operator_sandbox: Sandbox) -> None:
    """As after an upgrade from a version without VM pods: running VMs and no pods. The controller
    creates each VM's pod bound to its node; no domain restarts."""
    sb = operator_sandbox
    ns = make_namespace(sb, "upgrade")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), *(vm_manifest(f"u{i}", ns, POOL) for i in range(2)))
    before = {}
    for i in range(2):
        vm = wait_phase(sb, ns, f"u{i}", "Running")
        conn = libvirt_conn(sb, vm["status"]["nodeName"])
        try:
            before[f"u{i}"] = (vm["status"]["nodeName"], conn.lookupByName(vm["status"]["domain"]["name"]).ID())
        finally:
            conn.close()
    stop_controllers(sb)  # both replicas: the standby would recreate the pods
    try:
        old = {p["metadata"]["uid"] for p in _vm_pods(sb, ns)}
        sb.kubectl("-n", ns, "delete", "pods", "-l", "failovervm.io/vm-uid", "--grace-period=0", "--force")
        assert not _vm_pods(sb, ns)
    finally:
        restart_operator(sb)
    pods = wait_for(lambda: len(p := _vm_pods(sb, ns)) == 2 and p, 60, what="the VM pods recreated")
    for pod in pods:
        name = pod["metadata"]["labels"]["failovervm.io/vm"]
        node, dom_id = before[name]
        assert pod["spec"]["nodeName"] == node and pod["metadata"]["uid"] not in old
        vm = get_vm(sb, ns, name)
        assert vm["status"]["nodeName"] == node and vm["status"]["phase"] == "Running"
        conn = libvirt_conn(sb, node)
        try:
            assert conn.lookupByName(vm["status"]["domain"]["name"]).ID() == dom_id, "the VM was restarted"
        finally:
            conn.close()
    assert events(sb, ns, "VMPodCreated")
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")
