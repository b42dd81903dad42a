"""Publishing this node's VFs: into the status of every VFPool that selects the node, and as the
extended resources `vf.failovervm.io/<pool>` in the Node's status (see failovervm.vfresources)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from failovervm import metrics, vfresources
from failovervm.kube import KubeAPI
from failovervm.labels import VF_RESOURCE_DOMAIN
from failovervm.scheduling import matches_selector
from failovervm.vfs import discover_vfs

log = logging.getLogger(__name__)

# Event reasons on the Node (changed resources) and on a VFPool whose name is no resource name.
VF_RESOURCES_UPDATED = "VFResourcesUpdated"
VF_RESOURCE_NAME_INVALID = "VFResourceNameInvalid"


def node_entry(node: str, sysfs_root: Path, pf_names: list[str]) -> dict[str, Any]:
    found = discover_vfs(sysfs_root, pf_names)
    entry: dict[str, Any] = {
        "node": node,
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


def publish(kube: KubeAPI, node: str, sysfs_root: Path) -> dict[str, int]:
    """Write this node's entry into each pool that selects it (and drop it from the others), then
    advertise the selecting pools' VFs as the Node's extended resources. A failed write is logged
    and does not keep the others from being made; the next round retries it."""
    node_obj = kube.get_node(node)
    labels = ((node_obj or {}).get("metadata") or {}).get("labels") or {}
    counts: dict[str, int] = {}
    pools = kube.list_pools()
    for pool in pools:
        name = pool["metadata"]["name"]
        spec = pool.get("spec") or {}
        selected = node_obj is not None and matches_selector(labels, spec.get("nodeSelector") or {})
        entry = node_entry(node, sysfs_root, list(spec.get("pfNames") or [])) if selected else None

        def mutate(st: dict[str, Any], entry: dict[str, Any] | None = entry) -> dict[str, Any] | None:
            nodes = [dict(e) for e in st.get("nodes") or [] if e.get("node") != node]
            current = next((e for e in st.get("nodes") or [] if e.get("node") == node), None)
            if entry is not None:
                merged = dict(entry)
                for keep in ("allocated", "free"):  # the controller's counts
                    if current and keep in current:
                        merged[keep] = current[keep]
                if current == merged:
                    return None
                nodes.append(merged)
            elif current is None:
                return None
            st["nodes"] = sorted(nodes, key=lambda e: str(e.get("node")))
            return st

        if entry is not None:
            counts[name] = entry["total"]
        try:
            kube.update_pool_status(name, mutate)
        except Exception as exc:
            log.warning("publishing the VFs of node %s into VFPool %s failed: %s", node, name, exc)
    if node_obj is None:
        return counts
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
