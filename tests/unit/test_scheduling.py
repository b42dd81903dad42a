"""Unit tests for the pure scheduler in failovervm.scheduling."""

from __future__ import annotations

import random
from typing import Any

import pytest

from failovervm.scheduling import (
    NodeInfo,
    Placement,
    PoolInfo,
    Taint,
    Toleration,
    Unschedulable,
    VMRequest,
    node_needs_evacuation,
    schedule,
    untolerated_taints,
)
from failovervm.vfs import VF

POOL = PoolInfo(name="p", node_selector={"sriov": "true"})
SRIOV = {"sriov": "true"}


def node(name: str, **kw: Any) -> NodeInfo:
    defaults: dict[str, Any] = {
        "labels": dict(SRIOV),
        "allocatable_cpu": 8,
        "allocatable_memory_mib": 16384,
    }
    defaults.update(kw)
    return NodeInfo(name=name, **defaults)


def vm(**kw: Any) -> VMRequest:
    defaults: dict[str, Any] = {"namespace": "default", "name": "vm1", "cpu": 2, "memory_mib": 2048, "pool": "p"}
    defaults.update(kw)
    return VMRequest(**defaults)


def vfs(*addrs: str) -> list[VF | str]:
    return [VF(pf="ens1f0", index=i, pci_address=a) for i, a in enumerate(addrs)]


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
    n = node("n1", taints=[Taint("soft", "", "PreferNoSchedule")])
    assert untolerated_taints(n, []) == []
    assert schedule(vm(), [n], POOL, {"n1": vfs("0000:3b:02.0")}, {}) == Placement("n1", "0000:3b:02.0")


def test_untolerated_taint_blocks_and_toleration_unblocks() -> None:
    n = node("n1", taints=[Taint("dedicated", "vms", "NoSchedule")])
    free = {"n1": vfs("0000:3b:02.0")}
    result = schedule(vm(), [n], POOL, free, {})
    assert isinstance(result, Unschedulable)
    assert result.reason == "NodesUnschedulable"
    assert "untolerated taint {dedicated: vms}" in result.message
    tol = [Toleration(key="dedicated", operator="Equal", value="vms", effect="NoSchedule")]
    assert schedule(vm(tolerations=tol), [n], POOL, free, {}) == Placement("n1", "0000:3b:02.0")


def test_no_execute_taint_blocks() -> None:
    n = node("n1", taints=[Taint("node.kubernetes.io/not-ready", "", "NoExecute")])
    result = schedule(vm(), [n], POOL, {"n1": vfs("0000:3b:02.0")}, {})
    assert isinstance(result, Unschedulable) and result.reason == "NodesUnschedulable"


def test_fenced_node_is_never_a_candidate_even_for_a_vm_that_tolerates_everything() -> None:
    n = node("n1", taints=[Taint("node.kubernetes.io/out-of-service", "nodeshutdown", "NoExecute")])
    result = schedule(vm(tolerations=[Toleration(operator="Exists")]), [n], POOL, {"n1": vfs("0000:3b:02.0")}, {})
    assert isinstance(result, Unschedulable) and "out of service (fenced)" in result.message


def test_toleration_from_k8s_dict() -> None:
    t = Toleration.from_k8s({"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5})
    assert t == Toleration(key="k", operator="Exists", value="", effect="NoSchedule")
    assert Toleration.from_k8s({"key": "k", "value": "v"}).operator == "Equal"
    assert Taint.from_k8s({"key": "a", "effect": "NoExecute"}) == Taint("a", "", "NoExecute")


# --- selectors, readiness, cordon ----------------------------------------------------------------


def test_vm_and_pool_selectors_must_both_match() -> None:
    nodes = [
        node("a", labels={"sriov": "true", "zone": "z1"}),
        node("b", labels={"sriov": "true", "zone": "z2"}),
        node("c", labels={"zone": "z1"}),  # not in the pool
    ]
    free = {n.name: vfs("0000:3b:02.0") for n in nodes}
    assert schedule(vm(node_selector={"zone": "z1"}), nodes, POOL, free, {}) == Placement("a", "0000:3b:02.0")
    assert schedule(vm(node_selector={"zone": "z2"}), nodes, POOL, free, {}) == Placement("b", "0000:3b:02.0")
    result = schedule(vm(node_selector={"zone": "z3"}), nodes, POOL, free, {})
    assert isinstance(result, Unschedulable)
    assert result.reason == "NoMatchingNode"
    assert result.message.startswith("0/3 nodes are available: ")
    assert "3 node(s) didn't match the VM's nodeSelector" in result.message


def test_pool_selector_message_names_pool() -> None:
    result = schedule(vm(), [node("c", labels={})], POOL, {"c": vfs("0000:3b:02.0")}, {})
    assert isinstance(result, Unschedulable)
    assert result.reason == "NoMatchingNode"
    assert "didn't match VFPool p's nodeSelector" in result.message
    assert result.node_reasons == {"c": "node(s) didn't match VFPool p's nodeSelector"}


def test_empty_selectors_match_everything() -> None:
    pool = PoolInfo(name="p")
    n = node("n1", labels={})
    assert schedule(vm(), [n], pool, {"n1": vfs("0000:3b:02.0")}, {}) == Placement("n1", "0000:3b:02.0")


@pytest.mark.parametrize(("kw", "text"), [({"ready": False}, "not ready"), ({"unschedulable": True}, "unschedulable")])
def test_not_ready_and_cordoned_nodes_are_skipped(kw: dict[str, object], text: str) -> None:
    bad = node("a", **kw)
    good = node("b")
    free = {"a": vfs("0000:3b:02.0", "0000:3b:02.1"), "b": vfs("0000:3b:02.0")}
    assert schedule(vm(), [bad, good], POOL, free, {}) == Placement("b", "0000:3b:02.0")
    result = schedule(vm(), [bad], POOL, free, {})
    assert isinstance(result, Unschedulable)
    assert result.reason == "NodesUnschedulable"
    assert text in result.message


def test_exclude_skips_migration_source() -> None:
    nodes = [node("a"), node("b")]
    free = {"a": vfs("0000:3b:02.0", "0000:3b:02.1"), "b": vfs("0000:3b:02.0")}
    assert schedule(vm(), nodes, POOL, free, {}) == Placement("a", "0000:3b:02.0")
    assert schedule(vm(), nodes, POOL, free, {}, exclude={"a"}) == Placement("b", "0000:3b:02.0")
    result = schedule(vm(), [node("a")], POOL, free, {}, exclude={"a"})
    assert isinstance(result, Unschedulable)
    assert "excluded" in result.message


# --- VFs and capacity ----------------------------------------------------------------------------


def test_no_free_vf() -> None:
    nodes = [node("a"), node("b")]
    result = schedule(vm(), nodes, POOL, {"a": [], "b": []}, {})
    assert isinstance(result, Unschedulable)
    assert result.reason == "NoFreeVF"
    assert result.message == "0/2 nodes are available: 2 node(s) had no free VF in pool p."


def test_node_missing_from_free_vfs_has_none() -> None:
    result = schedule(vm(), [node("a")], POOL, {}, {})
    assert isinstance(result, Unschedulable) and result.reason == "NoFreeVF"


def test_insufficient_cpu_counts_used() -> None:
    n = node("a", allocatable_cpu=4)
    free = {"a": vfs("0000:3b:02.0")}
    assert isinstance(schedule(vm(cpu=4), [n], POOL, free, {}), Placement)
    result = schedule(vm(cpu=4), [n], POOL, free, {"a": (1, 0)})
    assert isinstance(result, Unschedulable)
    assert result.reason == "InsufficientCPU"
    assert result.message == "0/1 nodes are available: 1 Insufficient cpu."


def test_insufficient_memory_counts_used() -> None:
    n = node("a", allocatable_memory_mib=4096)
    free = {"a": vfs("0000:3b:02.0")}
    assert isinstance(schedule(vm(memory_mib=4096), [n], POOL, free, {"a": (6, 0)}), Placement)
    result = schedule(vm(memory_mib=4096), [n], POOL, free, {"a": (0, 1)})
    assert isinstance(result, Unschedulable)
    assert result.reason == "InsufficientMemory"
    assert "Insufficient memory" in result.message


def test_reason_is_the_closest_candidates() -> None:
    nodes = [
        node("a", labels={}),  # selector mismatch
        node("b", unschedulable=True),  # cordoned
        node("c"),  # no free VF
        node("d", allocatable_cpu=1),  # VF but not enough CPU
    ]
    free = {"b": vfs("0000:3b:02.0"), "d": vfs("0000:3b:02.0")}
    result = schedule(vm(), nodes, POOL, free, {})
    assert isinstance(result, Unschedulable)
    assert result.reason == "InsufficientCPU"
    assert result.message.startswith("0/4 nodes are available: ")
    for part in (
        "1 Insufficient cpu",
        "1 node(s) had no free VF in pool p",
        "1 node(s) were unschedulable",
        "1 node(s) didn't match VFPool p's nodeSelector",
    ):
        assert part in result.message
    assert set(result.node_reasons) == {"a", "b", "c", "d"}

    result = schedule(vm(), nodes[:3], POOL, free, {})
    assert isinstance(result, Unschedulable) and result.reason == "NoFreeVF"
    result = schedule(vm(), nodes[:2], POOL, free, {})
    assert isinstance(result, Unschedulable) and result.reason == "NodesUnschedulable"
    result = schedule(vm(), nodes[:1], POOL, free, {})
    assert isinstance(result, Unschedulable) and result.reason == "NoMatchingNode"


def test_message_groups_and_orders_counts() -> None:
    nodes = [node("a", unschedulable=True), node("b"), node("c")]
    result = schedule(vm(), nodes, POOL, {}, {})
    assert isinstance(result, Unschedulable)
    assert result.message == (
        "0/3 nodes are available: 2 node(s) had no free VF in pool p, 1 node(s) were unschedulable."
    )


def test_no_nodes() -> None:
    result = schedule(vm(), [], POOL, {}, {})
    assert isinstance(result, Unschedulable)
    assert result.reason == "NoMatchingNode"
    assert result.message.startswith("0/0 nodes are available")


# --- ranking and determinism ---------------------------------------------------------------------


def test_prefers_most_free_vfs_then_least_used_memory_then_name() -> None:
    nodes = [node("c"), node("b"), node("a")]
    free = {
        "a": vfs("0000:3b:02.0"),
        "b": vfs("0000:3b:02.0", "0000:3b:02.1"),
        "c": vfs("0000:3b:02.0", "0000:3b:02.1"),
    }
    assert schedule(vm(), nodes, POOL, free, {}) == Placement("b", "0000:3b:02.0")  # tie on VFs -> name
    assert schedule(vm(), nodes, POOL, free, {"b": (0, 1024)}) == Placement("c", "0000:3b:02.0")
    free["a"] = vfs("0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2")
    assert schedule(vm(), nodes, POOL, free, {"a": (0, 8000)}) == Placement("a", "0000:3b:02.0")


def test_picks_lowest_pci_address() -> None:
    free: dict[str, list[VF | str]] = {"a": ["0000:3b:0a.0", "0000:3b:02.7", "0000:3B:02.3", "0000:3b:10.0"]}
    assert schedule(vm(), [node("a")], POOL, free, {}) == Placement("a", "0000:3b:02.3")


def test_duplicate_free_entries_count_once() -> None:
    free: dict[str, list[VF | str]] = {
        "a": ["0000:3b:02.0", "0000:3b:02.0", VF("ens1f0", 0, "0000:3b:02.0")],
        "b": ["0000:3b:02.0", "0000:3b:02.1"],
    }
    assert schedule(vm(), [node("a"), node("b")], POOL, free, {}) == Placement("b", "0000:3b:02.0")


def test_deterministic_regardless_of_input_order() -> None:
    rng = random.Random(42)
    nodes = [node(f"n{i}") for i in range(8)]
    free = {n.name: vfs(*[f"0000:3b:02.{j}" for j in range(i % 3 + 1)]) for i, n in enumerate(nodes)}
    used = {n.name: (0, (i * 7) % 5 * 256) for i, n in enumerate(nodes)}
    expected = schedule(vm(), nodes, POOL, free, used)
    for _ in range(20):
        shuffled = nodes[:]
        rng.shuffle(shuffled)
        shuffled_free = {k: list(reversed(v)) for k, v in free.items()}
        assert schedule(vm(), shuffled, POOL, shuffled_free, used) == expected


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
        (NodeInfo(name="a", taints=[Taint("dedicated", "vms", "NoSchedule")]), False),
        (NodeInfo(name="a", ready=False), False),
    ],
)
def test_node_needs_evacuation(n: NodeInfo, expected: bool) -> None:
    assert node_needs_evacuation(n) is expected
