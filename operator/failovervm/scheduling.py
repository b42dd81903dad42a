"""Pure placement logic: which node (and which VF on it) a FailoverVM should run on.

Nothing in here talks to the API server; the operator gathers :class:`NodeInfo`, the pool's free
VFs and the per-node usage, calls :func:`schedule` and acts on the :class:`Placement` or reports the
:class:`Unschedulable` reason/message in the VM's status (the message mimics kube-scheduler's
``0/3 nodes are available: ...``).

Filters, in the order they are applied to every node (the first failing one is that node's
reason):

1. not in ``exclude`` (a migration excludes its source node);
2. the VM's ``nodeSelector`` and the pool's ``nodeSelector`` both match the node labels;
3. the node is Ready, not cordoned, and has no ``NoSchedule``/``NoExecute`` taint the VM does not
   tolerate (Kubernetes toleration semantics);
4. the pool has a free VF on the node;
5. enough allocatable CPU, then memory, counting what other VMs already use.

Among feasible nodes the one with the most free VFs wins, then the least used memory, then the
name; on it the free VF with the lowest PCI address is chosen. Everything is deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR
from typing import Any, Literal

from .nodehealth import OUT_OF_SERVICE_TAINT
from .quantity import MIB, parse_quantity_decimal
from .vfs import VF, pci_sort_key

__all__ = [
    "EVACUATION_TAINT_KEYS",
    "NodeInfo",
    "Placement",
    "PoolInfo",
    "Taint",
    "Toleration",
    "Unschedulable",
    "UnschedulableReason",
    "VMRequest",
    "matches_selector",
    "node_needs_evacuation",
    "schedule",
    "tolerates",
    "untolerated_taints",
]

UnschedulableReason = Literal[
    "NoMatchingNode", "NoFreeVF", "InsufficientCPU", "InsufficientMemory", "NodesUnschedulable"
]

#: Taints that mean "this node is going away / being drained": running VMs must leave. Cordon,
#: cluster-autoscaler's scale-down, and Karpenter's disruption (consolidation, drift, expiry).
KARPENTER_DISRUPTED_TAINT = "karpenter.sh/disrupted"
EVACUATION_TAINT_KEYS = frozenset({"node.kubernetes.io/unschedulable", "ToBeDeletedByClusterAutoscaler",
                                   KARPENTER_DISRUPTED_TAINT})

_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> Taint:
        """Build from a ``Node.spec.taints[]`` entry (dict as returned by the API)."""
        return cls(
            key=str(obj.get("key") or ""), value=str(obj.get("value") or ""), effect=str(obj.get("effect") or "")
        )


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> Toleration:
        """Build from a Pod-style toleration dict (``FailoverVM.spec.tolerations[]``)."""
        return cls(
            key=str(obj.get("key") or ""),
            operator=str(obj.get("operator") or "Equal"),
            value=str(obj.get("value") or ""),
            effect=str(obj.get("effect") or ""),
        )

    def tolerates(self, taint: Taint) -> bool:
        """Kubernetes ``Toleration.ToleratesTaint``.

        An empty effect matches every effect; an empty key with ``Exists`` matches every taint;
        ``Equal`` (the default) needs key and value to match; ``Exists`` ignores the value.
        """
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        op = self.operator or "Equal"
        if op == "Exists":
            return True
        if op == "Equal":
            # An empty key is only valid with Exists (API validation rejects it otherwise).
            return bool(self.key) and self.value == taint.value
        return False


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    unschedulable: bool = False
    taints: list[Taint] = field(default_factory=list)
    allocatable_cpu: int = 0
    allocatable_memory_mib: int = 0
    ready: bool = True

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> NodeInfo:
        """Build from a Node object as a dict (``kubernetes`` client ``to_dict()`` uses snake_case
        keys, the raw API and kopf camelCase; both are accepted)."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        allocatable = status.get("allocatable") or {}
        cpu = 0
        mem = 0
        try:
            cpu = int(parse_quantity_decimal(allocatable.get("cpu", 0)).to_integral_value(ROUND_FLOOR))
        except ValueError:
            pass
        try:
            mem = int((parse_quantity_decimal(allocatable.get("memory", 0)) / MIB).to_integral_value(ROUND_FLOOR))
        except ValueError:
            pass
        ready = any((c.get("type") == "Ready" and c.get("status") == "True") for c in status.get("conditions") or [])
        return cls(
            name=str(meta.get("name", "")),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            unschedulable=bool(spec.get("unschedulable", False)),
            taints=[Taint.from_k8s(t) for t in spec.get("taints") or []],
            allocatable_cpu=cpu,
            allocatable_memory_mib=mem,
            ready=ready,
        )


@dataclass(frozen=True)
class VMRequest:
    namespace: str
    name: str
    cpu: int
    memory_mib: int
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    pool: str = ""


@dataclass(frozen=True)
class PoolInfo:
    name: str
    node_selector: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    node: str
    pci_address: str


@dataclass(frozen=True)
class Unschedulable:
    reason: UnschedulableReason
    message: str
    node_reasons: dict[str, str] = field(default_factory=dict)
    """Why each node was rejected (node name -> short reason), for events and debugging."""


def matches_selector(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Equality-based selector match (``nodeSelector`` semantics; an empty selector matches all)."""
    return all(labels.get(k) == v for k, v in selector.items())


def tolerates(tolerations: Iterable[Toleration], taint: Taint) -> bool:
    return any(t.tolerates(taint) for t in tolerations)


def untolerated_taints(node: NodeInfo, tolerations: Sequence[Toleration]) -> list[Taint]:
    """The node's ``NoSchedule``/``NoExecute`` taints not tolerated (``PreferNoSchedule`` never blocks)."""
    return [t for t in node.taints if t.effect in _BLOCKING_EFFECTS and not tolerates(tolerations, t)]


def node_needs_evacuation(node: NodeInfo) -> bool:
    """True when VMs must be moved off ``node``: it is cordoned or being drained/deleted."""
    return node.unschedulable or any(t.key in EVACUATION_TAINT_KEYS for t in node.taints)


def _pci_of(entry: VF | str) -> str:
    return (entry.pci_address if isinstance(entry, VF) else entry).lower()


def _pci_key(addr: str) -> tuple[int, tuple[int, int, int, int], str]:
    try:
        return (0, pci_sort_key(addr), addr)
    except ValueError:  # malformed addresses sort last, by text
        return (1, (0, 0, 0, 0), addr)


# Rank of each failure: the larger, the closer the node came to being feasible.
_RANK: dict[UnschedulableReason, int] = {
    "NoMatchingNode": 0,
    "NodesUnschedulable": 1,
    "NoFreeVF": 2,
    "InsufficientCPU": 3,
    "InsufficientMemory": 4,
}


def schedule(
    vm: VMRequest,
    nodes: Sequence[NodeInfo],
    pool: PoolInfo,
    free_vfs: Mapping[str, Sequence[VF | str]],
    used: Mapping[str, tuple[int, int]],
    exclude: Iterable[str] = frozenset(),
) -> Placement | Unschedulable:
    """Pick a node and a free VF for ``vm`` or explain why none fits.

    ``free_vfs`` maps node name -> free VFs of ``pool`` on it (VF objects or PCI addresses).
    ``used`` maps node name -> ``(cpu, memory_mib)`` already taken by other VMs there.
    ``exclude`` lists nodes that must not be chosen (the source node of a migration).
    """
    excluded = set(exclude)
    feasible: list[tuple[int, int, str, str]] = []  # (-free, used_mem, name, pci)
    per_node: dict[str, str] = {}
    per_node_rank: dict[str, UnschedulableReason] = {}

    def reject(node: str, reason: UnschedulableReason, text: str) -> None:
        per_node[node] = text
        per_node_rank[node] = reason

    for node in sorted(nodes, key=lambda n: n.name):
        if node.name in excluded:
            reject(node.name, "NoMatchingNode", "node(s) excluded (migration source)")
            continue
        if not matches_selector(node.labels, vm.node_selector):
            reject(node.name, "NoMatchingNode", "node(s) didn't match the VM's nodeSelector")
            continue
        if not matches_selector(node.labels, pool.node_selector):
            reject(node.name, "NoMatchingNode", f"node(s) didn't match VFPool {pool.name}'s nodeSelector")
            continue
        if not node.ready:
            reject(node.name, "NodesUnschedulable", "node(s) were not ready")
            continue
        if any(t.key == OUT_OF_SERVICE_TAINT for t in node.taints):
            # Whatever a VM tolerates: the controller releases every VM of a fenced node, so a VM
            # placed there would be restarted again and again.
            reject(node.name, "NodesUnschedulable", "node(s) were out of service (fenced)")
            continue
        if node.unschedulable:
            reject(node.name, "NodesUnschedulable", "node(s) were unschedulable")
            continue
        bad = untolerated_taints(node, vm.tolerations)
        if bad:
            t = bad[0]
            reject(node.name, "NodesUnschedulable", f"node(s) had untolerated taint {{{t.key}: {t.value}}}")
            continue
        free = sorted({_pci_of(v) for v in free_vfs.get(node.name, ())}, key=_pci_key)
        if not free:
            reject(node.name, "NoFreeVF", f"node(s) had no free VF in pool {pool.name}")
            continue
        used_cpu, used_mem = used.get(node.name, (0, 0))
        if vm.cpu > node.allocatable_cpu - used_cpu:
            reject(node.name, "InsufficientCPU", "Insufficient cpu")
            continue
        if vm.memory_mib > node.allocatable_memory_mib - used_mem:
            reject(node.name, "InsufficientMemory", "Insufficient memory")
            continue
        feasible.append((-len(free), used_mem, node.name, free[0]))

    if feasible:
        _, _, name, pci = min(feasible)
        return Placement(node=name, pci_address=pci)

    total = len(nodes)
    if not per_node:
        return Unschedulable(reason="NoMatchingNode", message=f"0/{total} nodes are available: no nodes in the cluster")
    reason = max(per_node_rank.values(), key=lambda r: _RANK[r])
    counts = Counter(per_node.values())
    parts = [f"{n} {text}" for text, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    message = f"0/{total} nodes are available: {', '.join(parts)}."
    return Unschedulable(reason=reason, message=message, node_reasons=dict(per_node))
