"""Publishing this node's VFs: into the node's own VFInventory (cluster-scoped, named exactly after
the Node, owned by it so it is garbage-collected with it, written only by this node's agent), one
entry per VFPool that selects the node; and as the extended resources `vf.failovervm.io/<pool>` in
the Node's status (see failovervm.vfresources). VFPool status keeps only the totals the controller
counts: no agent writes a shared object, and no object grows with the number of nodes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failovervm import API_GROUP, API_VERSION, metrics, vfresources
from failovervm.kube import KubeAPI
from failovervm.labels import VF_RESOURCE_DOMAIN
from failovervm.scheduling import matches_selector
from failovervm.vfs import discover_vfs

log = logging.getLogger(__name__)

# Event reasons on the Node (changed resources) and on a VFPool whose name is no resource name.
VF_RESOURCES_UPDATED = "VFResourcesUpdated"
VF_RESOURCE_NAME_INVALID = "VFResourceNameInvalid"


def node_entry(pool: str, sysfs_root: Path, pf_names: list[str]) -> dict[str, Any]:
    """The VFInventory entry of one pool on this node (spec.pools[])."""
    found = discover_vfs(sysfs_root, pf_names)
    entry: dict[str, Any] = {
        "name": pool,
        "pfs": sorted({vf.pf for vf in found.vfs}),
        "vfs": [
            {k: v for k, v in {"pciAddress": vf.pci_address, "pf": vf.pf, "index": vf.index,
                               "vendor": vf.vendor, "device": vf.device}.items() if v is not None}
            for vf in found.vfs
        ],
        "total": len(found.vfs),
        "simulated": found.simulated,
    }
    if found.missing_pfs:
        entry["missingPfs"] = list(found.missing_pfs)
    if found.reasons:
        entry["reasons"] = list(found.reasons)[:16]
    return entry


def advertise(kube: KubeAPI, node_obj: Mapping[str, Any], counts: Mapping[str, int]) -> vfresources.Plan:
    """Make the Node advertise `counts` (pool -> VFs, the pools that select it) as the extended
    resources `vf.failovervm.io/<pool>` in status capacity and allocatable. Compared with `node_obj`
    (as just read): written only when they differ, then logged, counted and reported as an Event."""
    node = str(node_obj["metadata"]["name"])
    plan = vfresources.plan(node_obj.get("status"), counts)
    if plan.patch is not None:
        try:
            kube.patch_node_status(node, plan.patch)
        except Exception:
            metrics.VF_RESOURCE_PATCHES.labels(node, "failed").inc()
            raise
        metrics.VF_RESOURCE_PATCHES.labels(node, "written").inc()
        summary = vfresources.describe(plan.changes)
        log.info("node %s advertises %s", node, summary)
        kube.event(node_obj, VF_RESOURCES_UPDATED, f"VF extended resources: {summary}", component=f"agent/{node}")
    prefix = f"{VF_RESOURCE_DOMAIN}/"
    metrics.set_vf_resources(node, {name.removeprefix(prefix): n for name, n in plan.desired.items()})
    return plan


@dataclass
class Published:
    """What this agent last wrote into its node's VFInventory (None: not known, read it): a round
    that finds the same writes nothing and reads nothing of it."""

    inventory: dict[str, Any] | None = None


def inventory_body(node_obj: Mapping[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The node's VFInventory: named after the Node, owned by it (garbage-collected with it)."""
    meta = node_obj.get("metadata") or {}
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "VFInventory",
        "metadata": {"name": meta["name"], "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": meta["name"], "uid": meta.get("uid")}]},
        "spec": {"nodeName": meta["name"], "pools": sorted(entries, key=lambda e: str(e["name"]))},
    }


def write_inventory(kube: KubeAPI, body: dict[str, Any], published: Published) -> bool:
    """Create or replace the node's VFInventory when it differs from what is there; True if written."""
    current = published.inventory
    if current is None:
        current = kube.get_inventory(body["metadata"]["name"])
    if current is not None and current.get("spec") == body["spec"] and \
            (current.get("metadata") or {}).get("ownerReferences") == body["metadata"]["ownerReferences"]:
        published.inventory = current
        return False
    try:
        published.inventory = kube.put_inventory(body, current)
    except Exception:
        published.inventory = None  # read it again next round (a conflict, a deletion)
        raise
    return True


def publish(kube: KubeAPI, node: str, sysfs_root: Path, published: Published | None = None) -> dict[str, int]:
    """Write this node's VFs of each pool that selects it into its VFInventory, then advertise them
    as the Node's extended resources. A failed write is logged and does not keep the other from
    being made; the next round retries it."""
    node_obj = kube.get_node(node)
    pools = kube.list_pools()
    if node_obj is None:
        return {}  # the Node is gone: its inventory goes with it (garbage collector)
    return publish_node(kube, node_obj, pools, sysfs_root, published if published is not None else Published())


def publish_node(kube: KubeAPI, node_obj: Mapping[str, Any], pools: list[dict[str, Any]], sysfs_root: Path,
                 published: Published) -> dict[str, int]:
    """`publish` with the Node and the VFPools already read (the sandbox's agent-less nodes share
    one read of them)."""
    node = str(node_obj["metadata"]["name"])
    labels = (node_obj.get("metadata") or {}).get("labels") or {}
    counts: dict[str, int] = {}
    entries = []
    for pool in pools:
        name = pool["metadata"]["name"]
        spec = pool.get("spec") or {}
        if matches_selector(labels, spec.get("nodeSelector") or {}):
            entry = node_entry(name, sysfs_root, list(spec.get("pfNames") or []))
            entries.append(entry)
            counts[name] = entry["total"]
    try:
        if write_inventory(kube, inventory_body(node_obj, entries), published):
            log.info("node %s publishes its VFs: %s", node, counts or "none")
    except Exception as exc:
        log.warning("publishing the VFs of node %s into its VFInventory failed: %s", node, exc)
    try:
        plan = advertise(kube, node_obj, counts)
    except Exception as exc:
        log.warning("advertising the VF extended resources of node %s failed: %s", node, exc)
        return counts
    for pool in (p for p in pools if p["metadata"]["name"] in plan.skipped):
        kube.event(pool, VF_RESOURCE_NAME_INVALID, f"VFPool name {pool['metadata']['name']!r} is longer than 63 "
                   "characters or not a qualified name: its VFs are not advertised as an extended resource; "
                   "recreate the pool with a shorter name", type_="Warning", component=f"agent/{node}")
    return counts
