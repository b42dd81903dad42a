"""Agent-less sandbox nodes (`failovervm sandbox up --virtual-nodes M --vfs-per-node K`), for scale
work (benchmarks/scale.py): M more Nodes, labelled like the other sandbox nodes (so the example
VFPool selects them) plus failovervm.io/sandbox-virtual-node, kept Ready by the sandbox's heartbeat.
They have no libvirtd and no agent: VMs placed there are never started.

Each has a simulated sysfs tree (sriov.create: K VFs per PF) under <state-dir>/vnodes/<node>/sysfs,
and the heartbeat publishes it the way an agent does, with the agent's own code
(agent.inventory.publish_node): the node's VFInventory, and its vf.failovervm.io/<pool> extended
resources, written only when they change. One LIST of the VFPools and one of these Nodes per round
serve all of them (an agent reads its own Node and the pools each round)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from failovervm import labels
from failovervm.kube import KubeAPI
from failovervm_sandbox import sriov
from failovervm_sandbox.nodes import SandboxNode

log = logging.getLogger(__name__)

# What each of them offers besides its VFs: room for far more small VMs than a libvirt node (nothing
# runs there), so that their VFs, not CPU or pods, bound how many VMs they take.
CPU, MEMORY, PODS = "512", "2Ti", "500"

# The heartbeat publishes their inventories every this many seconds (an agent: every 5 s).
PUBLISH_SECONDS = 10.0
# And completes the graceful pod deletions due on them this often (their "kubelets" are slower
# than those of the libvirt nodes, so that M of them do not cost M LISTs every 2 s).
SWEEP_SECONDS = 10.0


def vnode_name(i: int) -> str:
    return f"sandbox-vnode-{i}"


def sysfs_root(state_dir: Path, name: str) -> Path:
    return state_dir / "vnodes" / name / "sysfs"


def sandbox_nodes(state_dir: Path, count: int, accel: str) -> list[SandboxNode]:
    """The virtual nodes as SandboxNodes (what nodes.register and the heartbeat take)."""
    return [SandboxNode(name=vnode_name(i), address="127.0.0.1", libvirt_uri="", accel=accel,
                        sysfs_root=str(sysfs_root(state_dir, vnode_name(i))), cpu=CPU, memory=MEMORY, pods=PODS)
            for i in range(1, count + 1)]


def create_trees(nodes: Sequence[SandboxNode], vfs: int, pfs: int) -> None:
    """Their simulated sysfs trees (kept when they exist with the same shape)."""
    for node in nodes:
        root = Path(node.sysfs_root)
        if not (root / "SIMULATED").exists():
            sriov.create(root, vfs, node.name, pfs)


def label(core: Any, nodes: Sequence[SandboxNode]) -> None:
    """Mark them agent-less (and drop the libvirt annotation nodes.register gave them)."""
    for node in nodes:
        core.patch_node(node.name, {"metadata": {"labels": {labels.SANDBOX_VIRTUAL_NODE: "true"},
                                                 "annotations": {labels.LIBVIRT_URI: None}}})


def remove_others(core: Any, keep: Sequence[SandboxNode]) -> list[str]:
    """Delete the virtual Nodes beyond the current count (`up --virtual-nodes` lowered, or 0); their
    VFInventories go with them (garbage collector: the Node owns its inventory)."""
    names = {n.name for n in keep}
    removed = []
    for obj in core.list_node(label_selector=f"{labels.SANDBOX_VIRTUAL_NODE}=true").get("items") or []:
        name = obj["metadata"]["name"]
        if name not in names:
            core.delete_node(name)
            removed.append(name)
    return removed


class Publisher:
    """Publishes the virtual nodes' VFs, as their agents would (see the module doc)."""

    def __init__(self, kube: KubeAPI, nodes: Sequence[SandboxNode],
                 list_nodes: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        from failovervm.agent.inventory import Published

        self.kube = kube
        self.nodes = {n.name: n for n in nodes}
        self.published = {n.name: Published() for n in nodes}
        self.list_nodes = list_nodes or kube.list_nodes

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str, nodes: Sequence[SandboxNode]) -> Publisher:
        """Over the API server, reading only the virtual Nodes (a label-selected LIST)."""
        from failovervm import kube as kube_mod

        kube = kube_mod.Kube(kube_mod.load(kubeconfig))
        selector = f"{labels.SANDBOX_VIRTUAL_NODE}=true"
        return cls(kube, nodes, lambda: list(kube.core.list_node(label_selector=selector)["items"]))

    def round(self, skip: Collection[str] = ()) -> int:
        """One round over every virtual node (except `skip`); returns the nodes published."""
        from failovervm.agent.inventory import publish_node

        if not self.nodes:
            return 0
        try:
            pools = self.kube.list_pools()
            node_objs = {o["metadata"]["name"]: o for o in self.list_nodes()}
        except Exception as exc:  # keep going through apiserver restarts
            log.warning("reading the pools and the virtual nodes failed: %s", exc)
            return 0
        done = 0
        for name, node in self.nodes.items():
            obj = node_objs.get(name)
            if obj is None or name in skip:
                continue
            publish_node(self.kube, obj, pools, Path(node.sysfs_root), self.published[name])
            done += 1
        return done
