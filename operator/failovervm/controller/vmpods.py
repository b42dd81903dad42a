"""The VM pods of the controller: finding a VM's pods, creating, relabelling and deleting them.

Which pods a VM has is read from an in-memory index of VM pods by VM uid (`PodIndex`): in the
controller, Kopf's index over a watch of the pods labelled failovervm.io/vm-uid (complete before any
handler runs), so no pod is LISTed per event. An index lags behind the API by a watch event; before
creating a pod the controller therefore asks the API once more (a LIST by the VM's uid label),
and every pod name is deterministic, so a stale view costs an AlreadyExists, never a second pod.

Pods are built by failovervm.vmpod; what they mean is in docs/capacity.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from failovervm import labels, vmpod
from failovervm.kube import ApiException, KubeAPI, api_error_message
from failovervm.scheduling import Unschedulable, UnschedulableReason

log = logging.getLogger(__name__)

Pod = dict[str, Any]

# Back-off of a VM whose pod the API server refused (ResourceQuota, LimitRange, Pod Security, a new
# namespace's default ServiceAccount not there yet...), or whose bound pod had to be given up (no
# free VF there after all): 1 s doubling to 2 minutes (the controller looks again every 3 s).
RETRY_START = 1.0
RETRY_MAX = 120.0


class PodIndex(Protocol):
    """The VM pods known to the controller, by the uid of their VM."""

    def pods_of(self, vm_uid: str) -> list[Pod]: ...
    def all(self) -> list[Pod]: ...


class ListedPods:
    """A PodIndex that asks the API server every time: before Kopf's index is bound, and in tests."""

    def __init__(self, kube: KubeAPI) -> None:
        self.kube = kube

    def pods_of(self, vm_uid: str) -> list[Pod]:
        return self.kube.list_pods(None, f"{labels.VM_UID_LABEL}={vm_uid}")

    def all(self) -> list[Pod]:
        return self.kube.list_pods(None, labels.VM_UID_LABEL)


class IndexedPods:
    """A PodIndex over Kopf's in-memory index (`{vm uid: {pod summaries}}`, see controller.main)."""

    def __init__(self, index: Mapping[str, Collection[Mapping[str, Any]]]) -> None:
        self.index = index

    def pods_of(self, vm_uid: str) -> list[Pod]:
        return [dict(p) for p in self.index.get(vm_uid, ())]

    def all(self) -> list[Pod]:
        return [dict(p) for key in list(self.index) for p in self.index.get(key, ())]


@dataclass
class Retry:
    attempts: int = 0
    next_try: float = 0.0
    reason: UnschedulableReason = "PodRejected"
    message: str = ""
    generation: int | None = None


class Retries:
    """When the controller may try again to create a pod the API server refused (or one it gave
    up), and why it waits: per key (a VM's uid for its running pod, "<uid>/<migration>" for a
    migration's target pod)."""

    def __init__(self) -> None:
        self._by_key: dict[str, Retry] = {}

    @staticmethod
    def key(vm: Mapping[str, Any], migration: str | None = None) -> tuple[str, int | None]:
        """(key, generation) of a VM's running pod or of its migration's target pod."""
        meta = vm["metadata"]
        return (f"{meta['uid']}/{migration}" if migration else str(meta["uid"])), meta.get("generation")

    def waiting(self, key: tuple[str, int | None]) -> Unschedulable | None:
        """The last failure while its back-off runs (a changed spec, a new metadata.generation,
        retries at once)."""
        entry = self._by_key.get(key[0])
        if entry is None or entry.generation != key[1] or time.monotonic() >= entry.next_try:
            return None
        return Unschedulable(entry.reason, entry.message)

    def failed(self, key: tuple[str, int | None], reason: UnschedulableReason, message: str) -> float:
        """Record a failure; returns the back-off before the next try."""
        entry = self._by_key.setdefault(key[0], Retry())
        if entry.generation != key[1]:
            entry.attempts = 0
        entry.attempts += 1
        delay = float(min(RETRY_START * 2 ** (entry.attempts - 1), RETRY_MAX))
        entry.next_try, entry.generation = time.monotonic() + delay, key[1]
        entry.reason, entry.message = reason, message
        return delay

    def succeeded(self, key: tuple[str, int | None]) -> None:
        self._by_key.pop(key[0], None)


@dataclass(frozen=True)
class Created:
    """What creating a pod gave: the pod (new or already there), or the API server's refusal."""

    pod: Pod | None
    rejected: str | None = None
    new: bool = False


def owned(pods: list[Pod], vm: Mapping[str, Any], role: str | None = None) -> list[Pod]:
    """The live pods of `vm` (not being deleted, not finished), of one role if given."""
    return [p for p in pods if vmpod.owned_by(p, vm) and not vmpod.is_terminating(p)
            and (role is None or vmpod.role_of(p) == role)]


def pods_of(index: PodIndex, vm: Mapping[str, Any], role: str | None = None) -> list[Pod]:
    return owned(index.pods_of(vm["metadata"]["uid"]), vm, role)


def fresh_pods_of(kube: KubeAPI, vm: Mapping[str, Any], role: str | None = None) -> list[Pod]:
    """The same from the API server (before a create: the index may lag)."""
    return owned(kube.list_pods(vm["metadata"]["namespace"], f"{labels.VM_UID_LABEL}={vm['metadata']['uid']}"),
                 vm, role)


def create(kube: KubeAPI, body: dict[str, Any]) -> Created:
    """Create a VM pod. A pod of that name that is on its way out (deleted with a grace period that
    no kubelet ends, or Failed after a kubelet eviction) is removed first; one that is alive is
    returned as is. A refusal by the API server (4xx) is returned with its message; anything else
    (5xx, network) is raised for the caller's retry."""
    meta = body["metadata"]
    for _attempt in range(3):
        try:
            return Created(kube.create_pod(body), new=True)
        except ApiException as exc:
            if exc.status != 409:
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    return Created(None, rejected=api_error_message(exc))
                raise
        existing = kube.get_pod(meta["namespace"], meta["name"])
        if existing is None:
            continue
        if not vmpod.is_terminating(existing):
            return Created(existing)
        kube.delete_pod(meta["namespace"], meta["name"], grace_period=0, uid=existing["metadata"].get("uid"))
    return Created(None, rejected=f"pod {meta['namespace']}/{meta['name']} kept being recreated concurrently")


def delete(kube: KubeAPI, pod: Mapping[str, Any]) -> bool:
    """Delete exactly this pod (its uid), at once (grace 0: nothing waits for a kubelet)."""
    meta = pod["metadata"]
    return kube.delete_pod(meta["namespace"], meta["name"], grace_period=0, uid=meta.get("uid"))


def make_running(kube: KubeAPI, pod: Mapping[str, Any]) -> Pod | None:
    """A migration target's pod becomes the VM's running pod (role=running, no migration label)."""
    meta = pod["metadata"]
    return kube.patch_pod(meta["namespace"], meta["name"], {"metadata": {"labels": {
        labels.ROLE_LABEL: labels.ROLE_RUNNING, labels.MIGRATION_LABEL: None}}})


def describe(pod: Mapping[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def log_created(pod: Mapping[str, Any], node: str | None) -> None:
    log.info("created VM pod %s%s", describe(pod), f" bound to {node}" if node else "")
