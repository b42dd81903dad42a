"""Drain guard pods: one pause pod per node that runs FailoverVMs, whose eviction the controller's
webhook refuses (429) while VMs are still on the node, so that `kubectl drain` and the
cluster-autoscaler wait for the evacuation."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from failovervm import labels
from failovervm.kube import KubeAPI

GUARD_PREFIX = "fvm-guard-"
GUARD_VERIFY_SECONDS = 30.0


def guard_pod_name(node: str) -> str:
    return f"{GUARD_PREFIX}{node}"[:253]


def guard_pod(node: Mapping[str, Any], namespace: str, image: str) -> dict[str, Any]:
    meta = node["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": guard_pod_name(meta["name"]),
            "namespace": namespace,
            "labels": {labels.GUARD_LABEL: "true", labels.VM_NODE: meta["name"]},
            "annotations": {
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "true",
                labels.PURPOSE_ANNOTATION: "Holds `kubectl drain` until the node's FailoverVMs have live-migrated away",
            },
            # A controller owner keeps `kubectl drain` from refusing the pod without --force, and
            # lets the garbage collector remove it with its Node.
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": meta["name"], "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": False}],
        },
        "spec": {
            "nodeName": meta["name"],
            "containers": [{"name": "guard", "image": image,
                            "resources": {"requests": {"cpu": "1m", "memory": "4Mi"},
                                          "limits": {"cpu": "10m", "memory": "16Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                                "runAsUser": 65535, "capabilities": {"drop": ["ALL"]},
                                                "readOnlyRootFilesystem": True}}],
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
        },
    }


class Guards:
    """The guard pods of the nodes, and which of them this controller knows to exist."""

    def __init__(self, kube: KubeAPI, namespace: str, image: str) -> None:
        self.kube, self.namespace, self.image = kube, namespace, image
        self._known: set[str] = set()  # nodes whose guard pod this controller created (or found)
        self._synced: dict[str, bool] = {}  # nodes checked for a stale guard pod since start
        self._verified: dict[str, float] = {}

    def ensure(self, node_name: str) -> None:
        """Make sure the node's guard pod exists *before* a VM is placed or migrated there, so that no
        drain can slip through between the placement and the next node sweep."""
        if node_name in self._known:
            return
        node = self.kube.get_node(node_name)
        if node is not None:
            self.kube.ensure_pod(guard_pod(node, self.namespace, self.image))
            self._known.add(node_name)
            self._verified[node_name] = time.monotonic()

    def sync(self, node: Mapping[str, Any], has_vms: bool) -> None:
        """Keep the node's guard pod in step with its VMs: there while it has VMs, gone otherwise.

        Remembers which guard pods exist so the periodic tick does not hit the API for nothing; an
        eviction or deletion always goes through the API (and clears the memory)."""
        name = node["metadata"]["name"]
        if has_vms:
            now_m = time.monotonic()
            if name not in self._known or now_m - self._verified.get(name, 0.0) > GUARD_VERIFY_SECONDS:
                # Create it, or (every 30 s) make sure nobody deleted it behind our back.
                self.kube.ensure_pod(guard_pod(node, self.namespace, self.image))
                self._known.add(name)
                self._verified[name] = now_m
        elif name in self._known or not self._synced.get(name):
            self.kube.delete_pod(self.namespace, guard_pod_name(name), grace_period=0)
            self._known.discard(name)
            self._synced[name] = True

    def forget(self, node: str) -> None:
        """The guard pod of `node` was deleted by someone else (eviction, kubectl): recreate when needed."""
        self._known.discard(node)
