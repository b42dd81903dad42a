"""Pure placement logic: what kube-scheduler cannot decide for a FailoverVM.

kube-scheduler chooses the node: it binds the VM's pod (failovervm.vmpod), which carries the VM's
CPU, memory, one `vf.failovervm.io/<pool>` and its nodeSelector, tolerations and affinity. What is
left here is what it cannot know:

- which free VF of the pool on that node the VM gets (:func:`choose_vf`: the lowest PCI address
  that no VFClaim holds; the claim itself, the lock, is made by failovervm.placement);
- whether the operator may put the VM on that node after all (:func:`node_refusal`: the node is
  gone, fenced or being emptied, or the VFPool does not cover it), with a message for the VM;
- taint and toleration semantics, shared with the evacuation logic and the CLI.

Everything is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR
from typing import Any, Literal

from .nodehealth import OUT_OF_SERVICE_TAINT
from .quantity import MIB, parse_quantity_decimal
from .vfs import VF, pci_sort_key

__all__ = [
    "EVACUATION_TAINT_KEYS",
    "KARPENTER_DISRUPTED_TAINT",
    "NodeInfo",
    "Placement",
    "PoolInfo",
    "Taint",
    "Toleration",
    "Unschedulable",
    "UnschedulableReason",
    "choose_vf",
    "matches_selector",
    "node_needs_evacuation",
    "node_refusal",
    "tolerates",
    "untolerated_taints",
]

# NoMatchingNode, NodesUnschedulable, NoFreeVF: the operator's own checks. WaitingForScheduler:
# waiting for kube-scheduler to bind the VM pod; Unschedulable: kube-scheduler cannot (its message says why);
# PodRejected: the API server refused the VM pod (ResourceQuota, LimitRange, Pod Security...).
UnschedulableReason = Literal[
    "NoMatchingNode", "NoFreeVF", "NodesUnschedulable", "WaitingForScheduler", "Unschedulable", "PodRejected",
    "MACConflict",
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


def choose_vf(node: str, pool: str, free: Iterable[VF | str]) -> Placement | Unschedulable:
    """The VF the VM gets on `node` (the one kube-scheduler bound its pod to): the free one with the
    lowest PCI address."""
    candidates = sorted({_pci_of(v) for v in free}, key=_pci_key)
    if not candidates:
        return Unschedulable(reason="NoFreeVF", message=f"node {node} has no free VF in pool {pool}")
    return Placement(node=node, pci_address=candidates[0])


def node_refusal(name: str, node: NodeInfo | None, pool: PoolInfo, in_inventory: bool) -> Unschedulable | None:
    """Why the operator will not place a VM on node `name` although kube-scheduler bound its pod
    there (None: it may). `in_inventory`: the node's VFInventory lists VFs of the pool. kube-scheduler
    already checked the pool's nodeSelector, taints and the VF count; this catches what changed
    since, and a node whose pool inventory the agent has not published."""
    if node is None:
        return Unschedulable(reason="NoMatchingNode", message=f"node {name} does not exist")
    if any(t.key == OUT_OF_SERVICE_TAINT for t in node.taints):
        # Whatever a VM tolerates: the controller releases every VM of a fenced node, so a VM
        # placed there would be restarted again and again.
        return Unschedulable(reason="NodesUnschedulable", message=f"node {name} is out of service (fenced)")
    if node_needs_evacuation(node):
        return Unschedulable(reason="NodesUnschedulable", message=f"node {name} is being drained")
    if not matches_selector(node.labels, pool.node_selector):
        return Unschedulable(reason="NoMatchingNode", message=f"node {name} does not match VFPool {pool.name}'s "
                             "nodeSelector")
    if not in_inventory:
        return Unschedulable(reason="NoFreeVF", message=f"VFPool {pool.name} lists no VFs on node {name} (has its "
                             "agent published them?)")
    return None
