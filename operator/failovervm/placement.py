"""Taking a VF on the node kube-scheduler chose: the VFClaim.

kube-scheduler binds the VM's pod to a node; the controller then claims a free VF of the VM's pool
on that node. Creating the VFClaim is the lock: its name is derived from node and PCI address, so a
second claim on the same VF fails with AlreadyExists and the next free VF is tried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from failovervm import API_GROUP, API_VERSION, labels, repair
from failovervm.expiring import ExpiringKeys
from failovervm.kube import KubeAPI
from failovervm.scheduling import NodeInfo, Placement, Unschedulable, choose_vf, node_refusal
from failovervm.vfs import claim_name
from failovervm.vmspec import pool_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    node: str
    pci_address: str
    pf: str
    claim: str


class RecentClaims:
    """The VFs this controller claimed (or found claimed) in the last `ttl` seconds, by node: a watch
    cache shows a claim only once its event arrives, and the next placement on the same node comes
    sooner; without this it would pick the same VF and pay an AlreadyExists for each claim it has
    not seen yet. Only ever adds "taken": a VF it lists that was released meanwhile is found free by
    the consistent LIST before a NoFreeVF."""

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        # By node: a pass looks at its node's VFs only, at a cost that does not grow with the
        # claims made elsewhere (failovervm.expiring).
        self._at: dict[str, ExpiringKeys] = {}
        self._lock = threading.Lock()

    def _node(self, node: str) -> ExpiringKeys:
        keys = self._at.get(node)
        if keys is None:
            keys = self._at[node] = ExpiringKeys(self.ttl, limit=100_000)
        return keys

    def add(self, node: str, pci: str) -> None:
        with self._lock:
            self._node(node).add(pci)

    def pick(self, node: str, pool: str, free: Iterable[str]) -> Placement | Unschedulable:
        """choose_vf among `free` without the VFs taken lately on `node`, and the chosen one counted
        as taken at once (before its claim is created): passes placing VMs on the same node in
        parallel each start from a different VF, instead of all from the lowest free one with all
        but one paying an AlreadyExists. A VF reserved here whose claim then fails stays out of the
        choice for `ttl` (the consistent LIST before a NoFreeVF still finds it)."""
        with self._lock:
            taken = self._node(node)
            decision = choose_vf(node, pool, [pci for pci in free if pci not in taken])
            if isinstance(decision, Placement):
                taken.add(decision.pci_address)
            return decision

    def on(self, node: str) -> set[tuple[str, str]]:
        with self._lock:
            taken = self._at.get(node)
            if taken is None:
                return set()
            out = {(node, str(pci)) for pci in taken}
            if not out:
                del self._at[node]
            return out


def claimed_vfs(claims: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    return {(c["spec"]["node"], c["spec"]["pciAddress"]) for c in claims}


def claim_body(node: str, pool: str, pf: str, pci: str, vm: Mapping[str, Any], purpose: str = "Running",
               migration: str | None = None) -> dict[str, Any]:
    meta = vm["metadata"]
    spec: dict[str, Any] = {
        "node": node, "pool": pool, "pf": pf, "pciAddress": pci, "purpose": purpose,
        "owner": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
    }
    if migration:
        spec["migration"] = migration
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "VFClaim",
        "metadata": {
            "name": claim_name(node, pci),
            "labels": {labels.VM_NODE: node, f"{labels.PREFIX}/pool": pool, labels.VM_UID_LABEL: meta["uid"]},
        },
        "spec": spec,
    }


def claim_on_node(kube: KubeAPI, vm: Mapping[str, Any], pool: Mapping[str, Any], node: str, *,
                  inventory: Mapping[str, str], node_obj: Mapping[str, Any] | None,
                  claims: Iterable[Mapping[str, Any]], recent: RecentClaims | None = None,
                  purpose: str = "Running", migration: str | None = None) -> Claimed | Unschedulable:
    """Claim a free VF of `pool` on `node` (where kube-scheduler bound the VM's pod) for `vm`, or say
    why the VM cannot have one there. Retries on claim races.

    Everything it starts from comes from the caller's watch caches (controller.cache): `inventory`
    ({pci: pf}, the node's VFs of the pool as its agent published them), `node_obj` and `claims`
    (the VFClaims on that node and pool). Creating the claim is the lock: a VF the cache showed free
    but that was claimed meanwhile costs an AlreadyExists and the next free one is tried; only when
    the cache shows none free is the API asked, by a consistent LIST of that node's and pool's claims
    (the cache may still show a claim released since). `recent`: what this controller claimed or
    found claimed lately, which the cache may not show yet (RecentClaims)."""
    pool_name = pool["metadata"]["name"]
    refusal = node_refusal(node, NodeInfo.from_k8s(node_obj) if node_obj is not None else None, pool_info(pool),
                           bool(inventory))
    if refusal is not None:
        return refusal
    claims = list(claims)
    mine = repair.own_claim(claims, vm, node, purpose, migration)
    if mine is not None:  # made by a pass that died before recording it: take it up again
        return Claimed(node, mine["spec"]["pciAddress"], mine["spec"].get("pf", ""), mine["metadata"]["name"])
    taken = claimed_vfs(claims) | (recent.on(node) if recent is not None else set())
    consistent = False
    for _attempt in range(16):
        free = [pci for pci in inventory if (node, pci) not in taken]
        decision = choose_vf(node, pool_name, free) if recent is None or consistent else recent.pick(
            node, pool_name, free)
        if isinstance(decision, Unschedulable):
            if consistent:
                return decision
            consistent = True
            selector = f"{labels.VM_NODE}={node},{labels.PREFIX}/pool={pool_name}"
            taken = claimed_vfs(kube.list_claims(label_selector=selector))
            continue
        assert isinstance(decision, Placement)
        pf = inventory.get(decision.pci_address, "")
        body = claim_body(node, pool_name, pf, decision.pci_address, vm, purpose, migration)
        created = kube.create_claim(body)
        if recent is not None:
            recent.add(node, decision.pci_address)
        if created:
            return Claimed(node, decision.pci_address, pf, body["metadata"]["name"])
        log.info("VF %s on %s was claimed concurrently; trying the next one", decision.pci_address, node)
        taken.add((node, decision.pci_address))
    return Unschedulable(reason="NoFreeVF", message=f"every free VF on node {node} was claimed concurrently; "
                         "will retry")
