"""The VM pod builder (failovervm.vmpod): the exact pod, names, requests, tolerations and affinity,
and the `failovervm hold` holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from failovervm import labels, vmpod
from failovervm.vmpod import PodSettings

SETTINGS = PodSettings(image="registry.example/fvm:1.2.3", overhead_cpu="100m", overhead_memory="160Mi")


def vm(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVM",
            "metadata": {"name": "db-1", "namespace": "tenant-a", "uid": "0a6b2a3e-1111-4222-8333-444455556666",
                         "labels": {"app": "db", labels.VM_NODE: "node-1"}},
            "spec": {"cpu": 2, "memory": "1Gi", "network": {"pool": "fast"}, **spec}}


def pool(selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "fast"}, "spec": {"nodeSelector": selector or {}}}


MIG = {"metadata": {"name": "m1", "uid": "9f9f9f9f-0000-4000-8000-000000000001"}}
SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": 65532, "runAsGroup": 65532, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}
NODE_FAILURE = [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]


def test_the_running_pod_for_kube_scheduler_exactly() -> None:
    obj = vm(nodeSelector={"zone": "a"}, priorityClassName="vm-high",
             tolerations=[{"key": "dedicated", "operator": "Equal", "value": "vms", "effect": "NoSchedule"}],
             affinity={"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                 {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}})
    pod = vmpod.build(obj, pool({"sriov": "true"}), SETTINGS)
    name = pod["metadata"]["name"]
    assert name.startswith("fvm-db-1-") and len(name) == len("fvm-db-1-") + 8
    assert pod == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "tenant-a",
            "labels": {"app": "db", "failovervm.io/vm": "db-1",
                       "failovervm.io/vm-uid": "0a6b2a3e-1111-4222-8333-444455556666", "failovervm.io/role": "running"},
            "annotations": {
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "true",
                "failovervm.io/purpose": "Holds the CPU, memory and VF of FailoverVM tenant-a/db-1 on its node; the "
                                         "domain runs in the node's libvirtd. Evicting it live-migrates the VM away.",
            },
            "ownerReferences": [{"apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVM", "name": "db-1",
                                 "uid": "0a6b2a3e-1111-4222-8333-444455556666", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "containers": [{
                "name": "vm", "image": "registry.example/fvm:1.2.3", "imagePullPolicy": "IfNotPresent",
                "command": ["failovervm", "hold"],
                "resources": {"requests": {"cpu": "2100m", "memory": "1184Mi", "vf.failovervm.io/fast": "1"},
                              "limits": {"cpu": "2100m", "memory": "1184Mi", "vf.failovervm.io/fast": "1"}},
                "securityContext": SECURITY,
            }],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "restartPolicy": "Always",
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "vms", "effect": "NoSchedule"},
                            *NODE_FAILURE],
            "priorityClassName": "vm-high",
            "nodeSelector": {"sriov": "true", "zone": "a"},
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}},
        },
    }


def test_names_are_deterministic_distinct_and_valid() -> None:
    running = vmpod.pod_name(vm())
    assert running == vmpod.pod_name(vm())  # a retry makes the same name: AlreadyExists, never a second pod
    target = vmpod.pod_name(vm(), MIG)
    assert target != running and target == vmpod.pod_name(vm(), MIG)
    other_mig = {"metadata": {"name": "m1", "uid": "another"}}  # a later migration of the same name
    assert vmpod.pod_name(vm(), other_mig) != target
    # Taken off its node (Scheduled turned False then): the next placement's pod has a new name, so a
    # `kubectl drain` retrying the eviction of the old pod's name gets NotFound instead of evicting
    # the VM again from wherever it was started next. Stable while it waits; new again after the next.
    def released(at: str, status: str = "False") -> dict[str, Any]:
        return {**vm(), "status": {"conditions": [
            {"type": "Scheduled", "status": status, "reason": "Evicted", "lastTransitionTime": at}]}}

    first = vmpod.pod_name(released("2026-11-29T23:17:04Z"))
    assert first != running and first == vmpod.pod_name(released("2026-11-29T23:17:04Z"))
    assert vmpod.pod_name(released("2026-11-29T23:19:00Z")) not in (first, running)
    assert vmpod.pod_name(released("2026-11-29T23:19:00Z", status="True")) == running  # placed: as before
    assert vmpod.pod_name(released("2026-11-29T23:17:04Z"), MIG) == target  # target pods: unchanged
    long = vm()
    long["metadata"]["name"] = "a" * 49 + ".b-" + "c" * 11
    for name in (vmpod.pod_name(long), vmpod.pod_name(long, MIG)):
        assert len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()
        assert all(part and part[0].isalnum() and part[-1].isalnum() for part in name.split("."))


@pytest.mark.parametrize(("cpu", "memory", "overhead", "want"), [
    (1, "128Mi", ("100m", "160Mi"), {"cpu": "1100m", "memory": "288Mi"}),
    (4, "2Gi", ("0", "0"), {"cpu": "4", "memory": "2048Mi"}),
    (1, 100_000_000, ("1", "1M"), {"cpu": "2", "memory": "101000000"}),
    (2, "512Mi", ("250m", "0.5Gi"), {"cpu": "2250m", "memory": "1024Mi"}),
])
def test_requests_are_the_guest_plus_the_overhead_and_one_vf(cpu: int, memory: str | int,
                                                             overhead: tuple[str, str], want: dict[str, str]) -> None:
    settings = PodSettings(overhead_cpu=overhead[0], overhead_memory=overhead[1])
    assert vmpod.requests(vm(cpu=cpu, memory=memory), settings) == {**want, "vf.failovervm.io/fast": "1"}


def test_a_negative_overhead_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        PodSettings(overhead_memory="-1Mi")


def test_tolerations_never_cover_a_node_being_emptied_or_fenced() -> None:
    tolerations = [
        {"operator": "Exists"},  # everything: would tolerate karpenter.sh/disrupted too
        {"key": "karpenter.sh/disrupted", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "ToBeDeletedByClusterAutoscaler", "operator": "Equal", "value": "1700000000"},
        {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"},
        {"key": "node.kubernetes.io/out-of-service", "operator": "Exists", "effect": "NoExecute"},
        {"operator": "Exists", "effect": "NoSchedule"},
        # Kept: another key, or only an effect none of those taints has.
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"operator": "Exists", "effect": "PreferNoSchedule"},
        {"key": "maintenance", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
    ]
    assert vmpod.tolerations(vm(tolerations=tolerations)) == [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"operator": "Exists", "effect": "PreferNoSchedule"},
        {"key": "maintenance", "operator": "Exists", "effect": "NoExecute"},  # tolerationSeconds: ignored for VMs
        *NODE_FAILURE,
    ]


def test_a_vm_without_tolerations_still_survives_node_failure_taints() -> None:
    assert vmpod.tolerations(vm()) == NODE_FAILURE


def test_conflicting_vm_and_pool_selectors_both_apply() -> None:
    pod = vmpod.build(vm(nodeSelector={"zone": "b", "disk": "ssd"}), pool({"zone": "a"}), SETTINGS)
    assert pod["spec"]["nodeSelector"] == {"zone": "a", "disk": "ssd"}
    assert pod["spec"]["affinity"] == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}


def test_a_target_pod_keeps_off_the_source_on_every_term_of_the_vms_node_affinity() -> None:
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]}]}},
        "podAffinity": {"x": 1}}
    obj = vm(affinity=user)
    pod = vmpod.build(obj, pool(), SETTINGS, migration=MIG, source_node="n1")
    not_source = {"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}
    assert pod["spec"]["affinity"] == {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}], "matchFields": [not_source]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}, not_source]}]}},
        "podAffinity": {"x": 1}}
    assert obj["spec"]["affinity"] == user  # the VM's own spec is not modified
    meta = pod["metadata"]
    assert meta["name"] == vmpod.pod_name(obj, MIG)
    assert meta["labels"][labels.ROLE_LABEL] == "target" and meta["labels"][labels.MIGRATION_LABEL] == "m1"
    assert "migration target" in meta["annotations"][labels.PURPOSE_ANNOTATION]
    pinned = vmpod.build(vm(), pool(), SETTINGS, migration=MIG, source_node="n1", target_node="n3")
    assert pinned["spec"]["affinity"] == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n3"]}]}]}}}


def test_a_bound_pod_names_its_node_and_asks_nothing_of_the_scheduler() -> None:
    pod = vmpod.build(vm(nodeSelector={"zone": "a"}, affinity={"podAntiAffinity": {}}), pool({"sriov": "1"}),
                      SETTINGS, node="node-1")
    assert pod["spec"]["nodeName"] == "node-1"
    assert "nodeSelector" not in pod["spec"] and "affinity" not in pod["spec"]
    assert pod["metadata"]["name"] == vmpod.pod_name(vm())
    assert pod["spec"]["containers"][0]["resources"]["requests"]["vf.failovervm.io/fast"] == "1"


def test_pod_security_restricted_holds() -> None:
    """The checks of the `restricted` Pod Security level that apply to this pod."""
    spec = vmpod.build(vm(), pool(), SETTINGS)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not spec.get("volumes") and not spec.get("hostNetwork") and not spec.get("hostPID")
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and not sc.get("privileged")
        assert not c.get("ports") and not c.get("volumeMounts")


def pod_with(**status: Any) -> dict[str, Any]:
    pod = vmpod.build(vm(), pool(), SETTINGS)
    pod["metadata"]["uid"] = "pod-uid"
    pod["status"] = status
    return pod


def test_reading_pods() -> None:
    obj = vm()
    pod = pod_with(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                "message": "0/3 nodes are available: 3 Insufficient memory."}])
    assert vmpod.owned_by(pod, obj) and vmpod.role_of(pod) == "running" and vmpod.node_of(pod) is None
    assert vmpod.unschedulable(pod) == "0/3 nodes are available: 3 Insufficient memory."
    forged = pod_with()
    forged["metadata"]["ownerReferences"] = []
    assert not vmpod.owned_by(forged, obj)  # labels alone are anyone's to set
    elsewhere = pod_with()
    elsewhere["metadata"]["namespace"] = "tenant-b"
    assert not vmpod.owned_by(elsewhere, obj)
    bound = pod_with()
    bound["spec"]["nodeName"] = "n1"
    assert vmpod.node_of(bound) == "n1" and vmpod.unschedulable(bound) is None
    assert not vmpod.is_terminating(bound)
    assert vmpod.is_terminating(pod_with(phase="Failed", reason="Evicted"))
    preempted = pod_with(conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}])
    assert vmpod.disruption_reason(preempted) == "PreemptionByScheduler"
    assert vmpod.disruption_reason(bound) is None
    kept = vmpod.summary(preempted)
    assert set(kept) == {"metadata", "spec", "status"} and "containers" not in kept["spec"]
    assert vmpod.owned_by(kept, obj) and vmpod.disruption_reason(kept) == "PreemptionByScheduler"


def test_hold_waits_for_sigterm_and_exits_0() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "failovervm.cli", "hold"], env=env)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "hold exited before it was told to"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_hold_imports_nothing_heavy() -> None:
    code = ("import sys, failovervm.cli as c; p = c.build_parser(); p.parse_args(['hold']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'kopf', 'libvirt', 'lxml', "
            "'rich', 'yaml', 'prometheus_client')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"
