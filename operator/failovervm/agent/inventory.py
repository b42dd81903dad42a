"""Publishing this node's VFs into the status of every VFPool that selects the node."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from failovervm.kube import KubeAPI
from failovervm.scheduling import matches_selector
from failovervm.vfs import discover_vfs

log = logging.getLogger(__name__)


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


def publish(kube: KubeAPI, node: str, sysfs_root: Path) -> dict[str, int]:
    """Write this node's entry into each pool that selects it (and drop it from the others)."""
    node_obj = kube.get_node(node)
    labels = ((node_obj or {}).get("metadata") or {}).get("labels") or {}
    counts: dict[str, int] = {}
    for pool in kube.list_pools():
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

        kube.update_pool_status(name, mutate)
        if entry is not None:
            counts[name] = entry["total"]
    return counts
