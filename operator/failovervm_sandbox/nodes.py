"""Node objects for the sandbox, and the heartbeat a kubelet would otherwise keep.

There is no kubelet in the sandbox. `register` creates one Node per libvirt host
with Ready status, capacity and the standard labels; `heartbeat` (run as a
background process by `sandbox up`) renews each node's Lease in kube-node-lease
and refreshes its Ready condition, so kube-controller-manager's node lifecycle
controller sees healthy nodes exactly as it would with kubelets.

The heartbeat also does the one part of a kubelet's pod handling that the API depends on: it
completes graceful deletions. Deleting a bound pod only sets its deletionTimestamp (now + grace
period); the pod stays Terminating until its node's kubelet, having killed the containers, confirms
with a delete of grace period 0 and the pod's uid as precondition. So every POD_SWEEP_SECONDS the
heartbeat sends that confirmation for the pods bound to each of its nodes that is up whose
deletionTimestamp has passed (`deletions_due`). Like kubelets, it learns them from a watch
(`TerminatingPods`: one watch of every bound pod for all the sandbox's nodes, keeping only those
being deleted), not by listing each node's pods every sweep, which cost the API server and the
heartbeat more with every pod (benchmarks/scale.py); while that watch is not in sync it lists per
node as before: `kubectl drain`, evictions, namespace
deletion and garbage collection then finish. It never touches a pod without a deletionTimestamp,
nor a pod on another node or on a node `node-down` stopped (a dead kubelet confirms nothing). It
runs no containers and writes no pod status.

Node status is shared: the operator's agents advertise extended resources
(`vf.failovervm.io/<pool>`) in status.capacity and status.allocatable. Every
status write here is therefore a strategic merge patch that names only the
sandbox's own keys: the heartbeat patches status.conditions alone (merged by
condition type), and (re-)registration sets cpu, memory, pods and
ephemeral-storage in capacity/allocatable, which merges into those maps and
leaves every other resource in them as it was. Nothing here replaces a Node.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import platform
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from failovervm import labels
from failovervm.kubeclient import (
    STRATEGIC_MERGE_PATCH,
    ApiClient,
    ApiException,
    Configuration,
    CoordinationV1Api,
    CoreV1Api,
    core_path,
)
from failovervm.reflector import Reflector

log = logging.getLogger(__name__)
LEASE_NS = "kube-node-lease"
LEASE_SECONDS = 40
# How often the heartbeat renews the Leases (and every READY_EVERY-th time posts Ready), and how
# often it completes the graceful deletions that are due on its nodes.
HEARTBEAT_SECONDS = 10.0
READY_EVERY = 3
POD_SWEEP_SECONDS = 2.0
# Sent explicitly (the client's default for a dict body happens to be the same): capacity and
# allocatable are maps, merged key by key; conditions are a list merged by `type`.
STRATEGIC_MERGE = STRATEGIC_MERGE_PATCH
# The resources the sandbox itself advertises for a node; anything else in capacity/allocatable
# belongs to someone else (the agents' VF pools) and is never written here.
OWN_RESOURCES = ("cpu", "memory", "pods", "ephemeral-storage")


@dataclass(frozen=True)
class SandboxNode:
    name: str
    address: str
    libvirt_uri: str
    sysfs_root: str
    accel: str
    cpu: str
    memory: str
    pods: str = "110"
    # The node's dedicated migration address (annotation failovervm.io/migration-address): its second
    # loopback address, so migration streams visibly leave the management address (docs/sandbox.md).
    migration_address: str = ""


def migration_address(address: str) -> str:
    """Node's second loopback address: its management address + 256 (127.0.0.11 -> 127.0.1.11),
    local to the machine like every 127/8 address."""
    return str(ipaddress.ip_address(address) + 256)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _conditions(now: dt.datetime) -> list[dict[str, Any]]:
    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now.isoformat(), "lastTransitionTime": now.isoformat(),
        }

    return [
        cond("Ready", "True", "SandboxHeartbeat", "failovervm sandbox heartbeat is posting status"),
        cond("MemoryPressure", "False", "SandboxHeartbeat", "no memory pressure"),
        cond("DiskPressure", "False", "SandboxHeartbeat", "no disk pressure"),
        cond("PIDPressure", "False", "SandboxHeartbeat", "no PID pressure"),
    ]


def ready_patch(now: dt.datetime) -> dict[str, Any]:
    """The heartbeat's status patch: the node's conditions and nothing else."""
    return {"status": {"conditions": _conditions(now)}}


def post_ready(core: CoreV1Api, name: str) -> None:
    """Post the node's conditions as a healthy kubelet would (Ready, no pressure)."""
    core.patch_node_status(name, ready_patch(_now()), content_type=STRATEGIC_MERGE)


def node_manifest(node: SandboxNode) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": _arch(),
                labels.SANDBOX_NODE: "true",
            },
            "annotations": {
                labels.LIBVIRT_URI: node.libvirt_uri,
                labels.SYSFS_ROOT: node.sysfs_root,
                labels.ACCEL: node.accel,
                labels.SIMULATED_VFS: "true",
                **({labels.MIGRATION_ADDRESS: node.migration_address} if node.migration_address else {}),
            },
        },
        "spec": {},
    }


def node_status(node: SandboxNode, k8s_version: str) -> dict[str, Any]:
    now = _now()
    capacity = dict(zip(OWN_RESOURCES, (node.cpu, node.memory, node.pods, "50Gi"), strict=True))
    return {
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": _conditions(now),
            "addresses": [
                {"type": "InternalIP", "address": node.address},
                {"type": "Hostname", "address": node.name},
            ],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "failovervm sandbox node (libvirt/QEMU)",
                "containerRuntimeVersion": "none://",
                "kubeletVersion": f"{k8s_version}-sandbox",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }
    }


def register(api: CoreV1Api, nodes: Sequence[SandboxNode], k8s_version: str) -> None:
    """Create (or update) the Node objects, post their status and take their first Lease.

    Re-registering an existing Node merges: its labels and annotations keep keys the sandbox does
    not set, and its capacity/allocatable keep resources others advertised (see the module doc)."""
    coord = CoordinationV1Api(api.api_client)
    for node in nodes:
        body = node_manifest(node)
        try:
            api.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            api.patch_node(node.name, {"metadata": body["metadata"]}, content_type=STRATEGIC_MERGE)
        api.patch_node_status(node.name, node_status(node, k8s_version), content_type=STRATEGIC_MERGE)
        renew_lease(coord, node.name)


def renew_lease(coord: CoordinationV1Api, name: str) -> None:
    now = _now()
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NS},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now.isoformat()},
    }
    try:
        coord.patch_namespaced_lease(name, LEASE_NS, {"spec": body["spec"]})
    except ApiException as exc:
        if exc.status != 404:
            raise
        coord.create_namespaced_lease(LEASE_NS, body)


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    node: str


def _timestamp(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def deletions_due(pods: Iterable[Mapping[str, Any]], nodes: Collection[str], now: dt.datetime) -> list[PodRef]:
    """The pods whose graceful deletion a kubelet on `nodes` would complete at `now`.

    That is a pod bound to one of `nodes` (spec.nodeName) whose deletionTimestamp is set and not in
    the future: the apiserver sets it to the time of the delete plus the grace period, so the grace
    period has elapsed. A pod whose deletionGracePeriodSeconds is already 0 was confirmed (by us or
    by a forced delete) and is left alone: the apiserver keeps such a pod only until its finalizers
    are removed, and confirming again would change nothing."""
    due = []
    for pod in pods:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        stamp = meta.get("deletionTimestamp")
        if not stamp or spec.get("nodeName") not in nodes or meta.get("deletionGracePeriodSeconds") == 0:
            continue
        if _timestamp(stamp) <= now:
            due.append(PodRef(meta["namespace"], meta["name"], meta["uid"], spec["nodeName"]))
    return due


def confirm_deletion_body(uid: str) -> dict[str, Any]:
    """The DeleteOptions of a kubelet's final delete: grace period 0, only for this very pod (a pod
    recreated under the same name has another uid, and the apiserver answers 409)."""
    return {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid}}


def pods_on(core: CoreV1Api, node: str) -> list[dict[str, Any]]:
    """The pods bound to `node`, in every namespace, as the apiserver's JSON."""
    return list(core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").get("items") or [])


# Every bound pod: what the heartbeat's kubelets would watch between them.
BOUND_PODS = "spec.nodeName!="


class TerminatingPods(Reflector):
    """The bound pods that are being deleted, by node, from one watch of every bound pod (a LIST
    only to start or restart it, e.g. after 410 Gone): what `complete_deletions` needs without
    listing each node's pods every sweep. A kubelet learns its pods the same way. Only pods with a
    deletionTimestamp are kept (a few fields each); `synced()` is False until the first LIST and
    while the watch restarts (complete_deletions then lists per node)."""

    def __init__(self, api: ApiClient, retry_seconds: float = 1.0, timeout_seconds: int = 300) -> None:
        super().__init__(api, core_path("pods"), name="terminating-pods", retry_seconds=retry_seconds,
                         timeout_seconds=timeout_seconds, field_selector=BOUND_PODS)
        self._by_node: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def on(self, node: str) -> list[dict[str, Any]]:
        """The pods bound to `node` that are being deleted (as deletions_due reads them)."""
        with self._lock:
            return list((self._by_node.get(node) or {}).values())

    @staticmethod
    def _summary(pod: Mapping[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid, node = str(meta.get("uid")), str(spec.get("nodeName") or "")
        if not meta.get("deletionTimestamp") or not node:
            return uid, node, None
        keep = {k: meta[k] for k in ("namespace", "name", "uid", "deletionTimestamp", "deletionGracePeriodSeconds")
                if k in meta}
        return uid, node, {"metadata": keep, "spec": {"nodeName": node}}

    def forget(self, pod: PodRef) -> None:
        """Confirmed: not due again before its DELETED event (a second confirmation would be a 404)."""
        with self._lock:
            on_node = self._by_node.get(pod.node) or {}
            on_node.pop(pod.uid, None)

    def see(self, event_type: str, pod: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of a bound pod."""
        uid, node, summary = self._summary(pod)
        with self._lock:
            on_node = self._by_node.setdefault(node, {})
            if event_type == "DELETED" or summary is None:
                on_node.pop(uid, None)
            else:
                on_node[uid] = summary
            if not on_node:
                self._by_node.pop(node, None)

    def reset(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """A fresh LIST: forget everything else."""
        fresh: dict[str, dict[str, dict[str, Any]]] = {}
        for pod in pods:
            uid, node, summary = self._summary(pod)
            if summary is not None:
                fresh.setdefault(node, {})[uid] = summary
        with self._lock:
            self._by_node = fresh


def complete_deletions(core: CoreV1Api, nodes: Iterable[str], now: dt.datetime | None = None,
                       known: TerminatingPods | None = None) -> int:
    """Confirm every graceful deletion that is due on `nodes`, as their kubelets would; the number
    confirmed. The pods come from `known` while it is in sync, else from a LIST per node. Errors are
    logged and the pod is tried again on the next sweep."""
    done = 0
    watched = known is not None and known.synced()
    for node in nodes:
        try:
            pods = known.on(node) if known is not None and watched else pods_on(core, node)
            due = deletions_due(pods, {node}, now or _now())
        except Exception as exc:  # keep going through apiserver restarts
            log.warning("listing the pods on %s failed: %s", node, exc)
            continue
        for pod in due:
            try:
                core.delete_namespaced_pod(pod.name, pod.namespace, body=confirm_deletion_body(pod.uid))
            except ApiException as exc:
                if exc.status in (404, 409):  # gone already, or replaced by a pod of the same name
                    log.debug("pod %s/%s (uid %s) is gone: %s", pod.namespace, pod.name, pod.uid, exc.reason)
                else:
                    log.warning("completing the deletion of pod %s/%s failed: %s", pod.namespace, pod.name,
                                exc.reason)
                continue
            except Exception as exc:
                log.warning("completing the deletion of pod %s/%s failed: %s", pod.namespace, pod.name, exc)
                continue
            done += 1
            if known is not None:
                known.forget(pod)
            log.info("pod %s/%s on %s: grace period over, deletion completed (as its kubelet would)",
                     pod.namespace, pod.name, pod.node)
    return done


def heartbeat(kubeconfig: str, nodes: Sequence[SandboxNode], k8s_version: str,
              interval: float = HEARTBEAT_SECONDS, down: Callable[[], set[str]] = set,
              sweep: float = POD_SWEEP_SECONDS, slow: Collection[str] = (),
              publish: Callable[[set[str]], object] | None = None) -> None:
    """Renew Leases every `interval` s and post Ready status every READY_EVERY-th time, and every
    `sweep` s complete the graceful pod deletions that are due (`complete_deletions`, from the
    watch of `TerminatingPods`); runs until SIGTERM. Nodes in `down()` (re-read every round) are
    skipped: `sandbox node-down` stopped their machine. The agent-less nodes (`slow`,
    virtualnodes.py) get their deletions completed every `interval` s only while the watch is not in
    sync, and `publish(skipped)` (their VF inventory round) runs every `interval` s."""
    api = ApiClient(Configuration.from_kubeconfig(kubeconfig))
    core, coord = CoreV1Api(api), CoordinationV1Api(api)
    terminating = TerminatingPods(ApiClient(Configuration.from_kubeconfig(kubeconfig))).start()
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    tick = 0
    skip: set[str] = set()
    next_beat = time.monotonic()
    while not stopping:
        try:
            skip = down()
        except Exception as exc:  # the state file is being replaced: keep the previous view
            log.debug("could not read the down nodes: %s", exc)
        beat = time.monotonic() >= next_beat
        if beat:
            next_beat = time.monotonic() + interval
            if publish is not None:
                try:
                    publish(skip)
                except Exception as exc:
                    log.warning("publishing the virtual nodes' VFs failed: %s", exc)
            for node in nodes:
                if node.name in skip:
                    continue
                try:
                    renew_lease(coord, node.name)
                    if tick % READY_EVERY == 0:
                        post_ready(core, node.name)
                except ApiException as exc:
                    if exc.status == 404:
                        log.info("node %s is gone; not posting its heartbeat", node.name)
                    else:
                        log.warning("heartbeat for %s failed: %s", node.name, exc.reason)
                except Exception as exc:  # keep beating through apiserver restarts
                    log.warning("heartbeat for %s failed: %s", node.name, exc)
            tick += 1
        every = beat or terminating.synced()
        complete_deletions(core, [n.name for n in nodes if n.name not in skip and (every or n.name not in slow)],
                           known=terminating)
        deadline = min(next_beat, time.monotonic() + sweep)
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
    terminating.stop()
