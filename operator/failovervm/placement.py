"""Taking a VF on the node kube-scheduler chose: the VFClaim.

kube-scheduler binds the VM's pod to a node; the controller then claims a free VF of the VM's pool
on that node. Creating the VFClaim is the lock: its name is derived from node and PCI address, so a
second claim on the same VF fails with AlreadyExists and the next free VF is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from failovervm import API_GROUP, API_VERSION, labels, repair
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


def pool_inventory(pool: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """node -> {pci address -> pf} as published by the agents in VFPool status."""
    out: dict[str, dict[str, str]] = {}
    for entry in (pool.get("status") or {}).get("nodes") or []:
        out[entry["node"]] = {vf["pciAddress"]: vf.get("pf", "") for vf in entry.get("vfs") or []}
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
                  purpose: str = "Running", migration: str | None = None,
                  claims: Iterable[Mapping[str, Any]] | None = None) -> Claimed | Unschedulable:
    """Claim a free VF of `pool` on `node` (where kube-scheduler bound the VM's pod) for `vm`, or say
    why the VM cannot have one there. Retries on claim races.

    The first choice is made from `claims` (the VFClaims as the caller has just listed them) or,
    without them, from the API server's cache of them (Kube.list_claims(cached=True)): no wait for
    a consistent LIST. Creating the claim is the lock either way: a VF that such a list showed free
    but that was claimed meanwhile costs an AlreadyExists, and the next choice is made from a
    consistent LIST; so is the answer that no VF is free there."""
    inventory = pool_inventory(pool).get(node) or {}
    pool_name = pool["metadata"]["name"]
    node_obj = kube.get_node(node)
    refusal = node_refusal(node, NodeInfo.from_k8s(node_obj) if node_obj is not None else None, pool_info(pool),
                           bool(inventory))
    if refusal is not None:
        return refusal
    for attempt in range(16):
        consistent = attempt > 0
        listed = kube.list_claims() if consistent else claims if claims is not None else kube.list_claims(cached=True)
        mine = repair.own_claim(listed, vm, node, purpose, migration)
        if mine is not None:  # made by a pass that died before recording it: take it up again
            return Claimed(node, mine["spec"]["pciAddress"], mine["spec"].get("pf", ""), mine["metadata"]["name"])
        taken = claimed_vfs(listed)
        decision = choose_vf(node, pool_name, [pci for pci in inventory if (node, pci) not in taken])
        if isinstance(decision, Unschedulable):
            if not consistent:
                continue  # the cached view may still show a claim released since: look again
            return decision
        assert isinstance(decision, Placement)
        pf = inventory.get(decision.pci_address, "")
        body = claim_body(node, pool_name, pf, decision.pci_address, vm, purpose, migration)
        if kube.create_claim(body):
            return Claimed(node, decision.pci_address, pf, body["metadata"]["name"])
        log.info("VF %s on %s was claimed concurrently; retrying", decision.pci_address, node)
    return Unschedulable(reason="NoFreeVF", message=f"every free VF on node {node} was claimed concurrently; "
                         "will retry")
