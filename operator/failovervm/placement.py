"""Placing a FailoverVM: gather cluster state, run the pure scheduler, take the VFClaim.

Creating the VFClaim is the lock: its name is derived from node and PCI address, so
a second claim on the same VF fails with AlreadyExists and the next VF is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from failovervm import API_GROUP, API_VERSION, labels
from failovervm.kube import KubeAPI
from failovervm.scheduling import NodeInfo, Placement, Unschedulable, schedule
from failovervm.vfs import claim_name
from failovervm.vmspec import pool_info, vm_request

log = logging.getLogger(__name__)
_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="placement-read")


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


def used_resources(vms: Iterable[Mapping[str, Any]], exclude_uid: str | None = None) -> dict[str, tuple[int, int]]:
    """node -> (cpu, memory MiB) taken by VMs placed there (and by migration targets reserved there)."""
    used: dict[str, tuple[int, int]] = {}

    def add(node: str | None, req_cpu: int, req_mem: int) -> None:
        if node:
            c, m = used.get(node, (0, 0))
            used[node] = (c + req_cpu, m + req_mem)

    for vm in vms:
        if vm["metadata"].get("uid") == exclude_uid:
            continue
        status = vm.get("status") or {}
        try:
            req = vm_request(vm)
        except (ValueError, KeyError):
            continue
        add(status.get("nodeName"), req.cpu, req.memory_mib)
        target = (status.get("migration") or {}).get("targetNode")
        if target and target != status.get("nodeName"):
            add(target, req.cpu, req.memory_mib)
    return used


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
            "labels": {labels.VM_NODE: node, f"{labels.PREFIX}/pool": pool, f"{labels.PREFIX}/vm-uid": meta["uid"]},
        },
        "spec": spec,
    }


def place(
    kube: KubeAPI, vm: Mapping[str, Any], *, exclude_nodes: Iterable[str] = (), target_node: str | None = None,
    purpose: str = "Running", migration: str | None = None,
) -> Claimed | Unschedulable:
    """Choose a node and claim a free VF there for `vm`. Retries on claim races."""
    req = vm_request(vm)
    # The four reads are independent: issue them together.
    f_pool = _READS.submit(kube.get_pool, req.pool)
    f_nodes = _READS.submit(kube.list_nodes)
    f_vms = _READS.submit(kube.list_vms)
    f_claims = _READS.submit(kube.list_claims)
    pool = f_pool.result()
    if pool is None:
        return Unschedulable(reason="NoMatchingNode", message=f"VFPool {req.pool!r} does not exist")
    inventory = pool_inventory(pool)
    nodes = [NodeInfo.from_k8s(n) for n in f_nodes.result()]
    if target_node is not None:
        nodes = [n for n in nodes if n.name == target_node]
        if not nodes:
            return Unschedulable(reason="NoMatchingNode", message=f"node {target_node!r} does not exist")
    used = used_resources(f_vms.result(), exclude_uid=vm["metadata"]["uid"])
    claim_list = f_claims.result()
    for attempt in range(16):
        taken = claimed_vfs(claim_list if attempt == 0 else kube.list_claims())
        free = {node: [pci for pci in vfs if (node, pci) not in taken] for node, vfs in inventory.items()}
        decision = schedule(req, nodes, pool_info(pool), free, used, exclude=set(exclude_nodes))
        if isinstance(decision, Unschedulable):
            return decision
        assert isinstance(decision, Placement)
        pf = inventory[decision.node].get(decision.pci_address, "")
        body = claim_body(decision.node, req.pool, pf, decision.pci_address, vm, purpose, migration)
        if kube.create_claim(body):
            return Claimed(decision.node, decision.pci_address, pf, body["metadata"]["name"])
        log.info("VF %s on %s was claimed concurrently; retrying", decision.pci_address, decision.node)
    return Unschedulable(reason="NoFreeVF", message="every free VF was claimed concurrently; will retry")
