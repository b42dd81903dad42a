"""Unit tests for what failovervm.scheduling still decides now that kube-scheduler picks the node:
taint semantics, the VF on the chosen node, and the operator's own refusals of a node."""

from __future__ import annotations

import pytest

from failovervm.scheduling import (
    NodeInfo,
    Placement,
    PoolInfo,
    Taint,
    Toleration,
    Unschedulable,
    choose_vf,
    node_needs_evacuation,
    node_refusal,
    untolerated_taints,
)
from failovervm.vfs import VF

POOL = PoolInfo(name="p", node_selector={"sriov": "true"})
SRIOV = {"sriov": "true"}


def node(name: str, **kw: object) -> NodeInfo:
    defaults: dict[str, object] = {"labels": dict(SRIOV)}
    defaults.update(kw)
    return NodeInfo(name=name, **defaults)


# --- tolerations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        (Toleration(key="k", operator="Equal", value="v", effect="NoSchedule"), Taint("k", "v", "NoSchedule"), True),
        (Toleration(key="k", operator="Equal", value="v"), Taint("k", "v", "NoExecute"), True),  # empty effect
        (Toleration(key="k", operator="Equal", value="x"), Taint("k", "v", "NoSchedule"), False),
        (Toleration(key="k", value="v"), Taint("k", "v", "NoSchedule"), True),  # default operator Equal
        (Toleration(key="k", operator="", value="v"), Taint("k", "v", "NoSchedule"), True),
        (Toleration(key="k", operator="Exists"), Taint("k", "anything", "NoSchedule"), True),
        (Toleration(key="k", operator="Exists", effect="NoExecute"), Taint("k", "", "NoSchedule"), False),
        (Toleration(key="other", operator="Exists"), Taint("k", "", "NoSchedule"), False),
        (Toleration(operator="Exists"), Taint("k", "v", "NoExecute"), True),  # tolerates everything
        (Toleration(operator="Exists", effect="NoSchedule"), Taint("k", "v", "NoExecute"), False),
        (Toleration(key="", operator="Equal", value="v"), Taint("k", "v", "NoSchedule"), False),  # invalid
        (Toleration(key="k", operator="Gt", value="1"), Taint("k", "2", "NoSchedule"), False),  # unknown op
        (Toleration(key="k", operator="Equal", value=""), Taint("k", "", "NoSchedule"), True),
    ],
)
def test_toleration_semantics(toleration: Toleration, taint: Taint, expected: bool) -> None:
    assert toleration.tolerates(taint) is expected


def test_prefer_no_schedule_never_blocks() -> None:
    n = node("n1", taints=[Taint("soft", "", "PreferNoSchedule"), Taint("hard", "", "NoExecute")])
    assert untolerated_taints(n, []) == [Taint("hard", "", "NoExecute")]
    assert untolerated_taints(n, [Toleration(key="hard", operator="Exists")]) == []


def test_toleration_from_k8s_dict() -> None:
    t = Toleration.from_k8s({"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5})
    assert t == Toleration(key="k", operator="Exists", value="", effect="NoSchedule")
    assert Toleration.from_k8s({"key": "k", "value": "v"}).operator == "Equal"
    assert Taint.from_k8s({"key": "a", "effect": "NoExecute"}) == Taint("a", "", "NoExecute")


# --- the VF on the node kube-scheduler chose ---------------------------------------------------------


def test_picks_lowest_pci_address() -> None:
    free: list[VF | str] = ["0000:3b:0a.0", "0000:3b:02.7", "0000:3B:02.3", "0000:3b:10.0"]
    assert choose_vf("a", "p", free) == Placement("a", "0000:3b:02.3")


def test_duplicates_and_vf_objects_count_once() -> None:
    free: list[VF | str] = ["0000:3b:02.1", "0000:3b:02.1", VF("ens1f0", 0, "0000:3b:02.1")]
    assert choose_vf("a", "p", free) == Placement("a", "0000:3b:02.1")


def test_malformed_addresses_sort_last() -> None:
    assert choose_vf("a", "p", ["junk", "0000:3b:02.5"]) == Placement("a", "0000:3b:02.5")


def test_no_free_vf_on_the_node() -> None:
    assert choose_vf("a", "p", []) == Unschedulable("NoFreeVF", "node a has no free VF in pool p")


# --- the operator's own refusals of a bound node --------------------------------------------------


@pytest.mark.parametrize(("n", "in_inventory", "reason", "text"), [
    (None, True, "NoMatchingNode", "node a does not exist"),
    (node("a", taints=[Taint("node.kubernetes.io/out-of-service", "nodeshutdown", "NoExecute")]), True,
     "NodesUnschedulable", "node a is out of service (fenced)"),
    (node("a", unschedulable=True), True, "NodesUnschedulable", "node a is being drained"),
    (node("a", taints=[Taint("karpenter.sh/disrupted", "", "NoSchedule")]), True, "NodesUnschedulable",
     "node a is being drained"),
    (node("a", labels={}), True, "NoMatchingNode", "node a does not match VFPool p's nodeSelector"),
    (node("a"), False, "NoFreeVF", "VFPool p lists no VFs on node a (has its agent published them?)"),
])
def test_node_refusal(n: NodeInfo | None, in_inventory: bool, reason: str, text: str) -> None:
    assert node_refusal("a", n, POOL, in_inventory) == Unschedulable(reason, text)  # type: ignore[arg-type]


def test_a_healthy_pool_node_is_not_refused() -> None:
    assert node_refusal("a", node("a", taints=[Taint("dedicated", "vms", "NoSchedule")]), POOL, True) is None
    assert node_refusal("a", node("a", labels={}), PoolInfo(name="p"), True) is None  # no pool selector


# --- NodeInfo.from_k8s and evacuation ------------------------------------------------------------


def test_node_info_from_k8s() -> None:
    obj = {
        "metadata": {"name": "n1", "labels": {"sriov": "true"}},
        "spec": {"unschedulable": True, "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "3500m", "memory": "16323892Ki"},
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
        },
    }
    n = NodeInfo.from_k8s(obj)
    assert n == NodeInfo(
        name="n1",
        labels={"sriov": "true"},
        unschedulable=True,
        taints=[Taint("k", "v", "NoSchedule")],
        allocatable_cpu=3,
        allocatable_memory_mib=15941,
        ready=True,
    )
    bare = NodeInfo.from_k8s({"metadata": {"name": "n2"}, "status": {"allocatable": {"cpu": "junk"}}})
    assert (bare.ready, bare.allocatable_cpu, bare.allocatable_memory_mib, bare.taints) == (False, 0, 0, [])


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (NodeInfo(name="a"), False),
        (NodeInfo(name="a", unschedulable=True), True),
        (NodeInfo(name="a", taints=[Taint("node.kubernetes.io/unschedulable", "", "NoSchedule")]), True),
        (NodeInfo(name="a", taints=[Taint("ToBeDeletedByClusterAutoscaler", "1700000000", "NoSchedule")]), True),
        (NodeInfo(name="a", taints=[Taint("karpenter.sh/disrupted", "", "NoSchedule")]), True),  # like cordon
        (NodeInfo(name="a", taints=[Taint("DeletionCandidateOfClusterAutoscaler", "1", "PreferNoSchedule")]), False),
        (NodeInfo(name="a", taints=[Taint("dedicated", "vms", "NoSchedule")]), False),
        (NodeInfo(name="a", ready=False), False),
    ],
)
def test_node_needs_evacuation(n: NodeInfo, expected: bool) -> None:
    assert node_needs_evacuation(n) is expected
