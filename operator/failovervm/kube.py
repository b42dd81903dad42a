"""Kubernetes adapter: the few API operations the operator needs, over the project's own client
(failovervm.kubeclient: plain dicts over urllib3).

Status is shared by the controller and the agents, so status writes are
read-modify-write with the object's resourceVersion and retried on conflict:
conditions are a list, and a merge patch would overwrite the other writer's.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from failovervm import API_GROUP, API_VERSION, jsoncopy, kubeclient
from failovervm.conditions import now_iso
from failovervm.expiring import ExpiringKeys
from failovervm.kubeclient import ApiClient, ApiException, ConfigException

__all__ = ["ApiClient", "ApiException", "ConfigException", "Kube", "KubeAPI", "api_error_message", "load"]

log = logging.getLogger(__name__)

FVM = "failovervms"
FVMM = "failovervmmigrations"
VFPOOL = "vfpools"
VFCLAIM = "vfclaims"
MACLEASE = "macleases"
VFINVENTORY = "vfinventories"
T = TypeVar("T")


class KubeAPI(Protocol):
    """The Kubernetes operations the controller and the agents use: `Kube` over the real API,
    and the shared in-memory fake in tests (tests/fakes). Domain logic takes this, never `Kube`."""

    def get_vm(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_vms(self, label_selector: str | None = None) -> list[dict[str, Any]]: ...
    def patch_vm(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def update_vm_status(
        self, namespace: str, name: str, mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
        uid: str | None = None, current: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None: ...
    def edit_vm_metadata(
        self, namespace: str, name: str, edit: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        current: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None: ...
    def set_finalizer(self, namespace: str, name: str, finalizer: str | tuple[str, ...], present: bool,
                      current: Mapping[str, Any] | None = None,
                      labels: Mapping[str, str] | None = None) -> dict[str, Any] | None: ...
    def list_pools(self) -> list[dict[str, Any]]: ...
    def get_pool(self, name: str) -> dict[str, Any] | None: ...
    def update_pool_status(self, name: str, mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
                           current: Mapping[str, Any] | None = None) -> None: ...
    def list_claims(self, cached: bool = False, label_selector: str | None = None) -> list[dict[str, Any]]: ...
    def create_claim(self, body: dict[str, Any]) -> bool: ...
    def patch_claim(self, name: str, body: dict[str, Any]) -> None: ...
    def delete_claim(self, name: str, uid: str | None = None) -> None: ...
    def create_mac_lease(self, body: dict[str, Any]) -> bool: ...
    def get_mac_lease(self, name: str) -> dict[str, Any] | None: ...
    def list_mac_leases(self) -> list[dict[str, Any]]: ...
    def delete_mac_lease(self, name: str, uid: str | None = None) -> None: ...
    def get_inventory(self, node: str) -> dict[str, Any] | None: ...
    def list_inventories(self) -> list[dict[str, Any]]: ...
    def put_inventory(self, body: dict[str, Any], current: Mapping[str, Any] | None = None) -> dict[str, Any]: ...
    def list_nodes(self) -> list[dict[str, Any]]: ...
    def get_node(self, name: str) -> dict[str, Any] | None: ...
    def get_namespace(self, name: str) -> dict[str, Any] | None: ...
    def patch_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def patch_node_status(self, name: str, body: dict[str, Any]) -> dict[str, Any] | None: ...
    def create_pod(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_pods(self, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]: ...
    def patch_pod(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None: ...
    def delete_pod(self, namespace: str, name: str, grace_period: int | None = None,
                   uid: str | None = None) -> bool: ...
    def event(
        self, obj: Mapping[str, Any], reason: str, note: str, *, type_: str = "Normal", action: str = "Reconcile",
        component: str = "failovervm",
    ) -> None: ...
    def get_migration(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_migrations(self, namespace: str | None = None) -> list[dict[str, Any]]: ...
    def delete_migration(self, namespace: str, name: str) -> None: ...
    def create_migration(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def create_migration_once(self, body: dict[str, Any]) -> dict[str, Any] | None: ...
    def update_migration_status(
        self, namespace: str, name: str, mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
    ) -> dict[str, Any] | None: ...


def age_seconds(obj: Mapping[str, Any]) -> float:
    """Seconds since the object's metadata.creationTimestamp (0 without one)."""
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return 0.0
    created = dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    return (dt.datetime.now(dt.UTC) - created).total_seconds()


def api_error_message(exc: ApiException) -> str:
    """The API server's own message of a refused request (its Status object's message: quota
    exceeded, Pod Security, an admission webhook...), else the HTTP reason."""
    try:
        status = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        status = {}
    message = status.get("message") if isinstance(status, dict) else None
    return str(message or exc.reason or f"HTTP {exc.status}")


def current_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's (current) context, as kubectl uses it."""
    try:
        contexts, active = kubeclient.list_kubeconfig_contexts(kubeconfig)
        if context:
            active = next((c for c in contexts if c["name"] == context), active)
        return str((active or {}).get("context", {}).get("namespace") or "default")
    except (ConfigException, OSError, TypeError):
        return "default"


# Connections kept open to the API server per client: one per thread that may call at once (the
# controller's 16 handler threads, its webhook and event threads); past the pool's size every call
# would open and close a TLS connection of its own, a handshake on both sides each time.
CONNECTIONS = kubeclient.CONNECTIONS


def load(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """Load a kubeconfig (path, or $KUBECONFIG) or the in-cluster ServiceAccount config."""
    cfg = kubeclient.Configuration.load(kubeconfig, context)
    cfg.connections = max(cfg.connections, CONNECTIONS)
    return ApiClient(cfg)


def unless_gone(read: Callable[[], T]) -> T | None:
    """`read()`, or None when the object is not there (404): the adapter's one rule for reads and
    patches of objects that may have been deleted meanwhile."""
    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise

def update_status(
    get: Callable[[], dict[str, Any] | None],
    replace: Callable[[dict[str, Any]], Any],
    mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
    what: str,
    *,
    current: Mapping[str, Any] | None = None,
    uid: str | None = None,
    attempts: int = 8,
) -> dict[str, Any] | None:
    """Read-modify-write of an object's status with optimistic concurrency (resourceVersion).

    `mutate(status) -> new status | None` (None or unchanged: no write). Returns the object as
    written (or as read when nothing changed), None when it is gone or its UID differs. `current`,
    a recently read copy, saves the first GET; a stale copy costs one 409 and an immediate retry
    (later conflicts back off).
    """
    for attempt in range(attempts):
        obj = jsoncopy.copy(current) if (current is not None and attempt == 0) else get()
        if obj is None or (uid and obj["metadata"]["uid"] != uid):
            return None
        old = jsoncopy.copy(obj.get("status") or {})
        new = mutate(jsoncopy.copy(old))
        if new is None or new == old:
            return obj
        obj["status"] = new
        # Without managedFields: the API server keeps an object's own when a write leaves them out
        # (a client unaware of them never clears them), and they are most of a FailoverVM's size.
        obj["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
        try:
            return dict(replace(obj))
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status != 409:
                raise
            # The first conflict is usually a stale `current` (another writer's patch landed since,
            # e.g. Kopf's finalizer): read again at once. Back off only when writers keep colliding.
            if attempt:
                time.sleep(0.05 * attempt)
    raise RuntimeError(f"status update of {what} kept conflicting")


class VMMetadataEdits:
    """Read-modify-write of a FailoverVM's metadata (labels, annotations, finalizers) over `get_vm` and
    `patch_vm`: one implementation for `Kube` and the in-memory fake of the tests (tests/fakes)."""

    def get_vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def patch_vm(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def edit_vm_metadata(
        self, namespace: str, name: str, edit: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        current: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """`edit(metadata) -> metadata merge patch | None` (None: nothing to change), applied with the
        object's resourceVersion and retried on conflict. Returns the object as patched (or as read
        when nothing changed), None if the VM is gone. `current` saves the first GET."""
        for attempt in range(8):
            obj = dict(current) if (current is not None and attempt == 0) else self.get_vm(namespace, name)
            if obj is None:
                return None
            patch = edit(obj["metadata"])
            if patch is None:
                return obj
            patch["resourceVersion"] = obj["metadata"]["resourceVersion"]
            try:
                return self.patch_vm(namespace, name, {"metadata": patch})
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status != 409:
                    raise
        raise RuntimeError(f"metadata update of {namespace}/{name} kept conflicting")

    def set_finalizer(self, namespace: str, name: str, finalizer: str | tuple[str, ...], present: bool,
                      current: Mapping[str, Any] | None = None,
                      labels: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """Add or remove a finalizer, or several (and set `labels` in the same patch). Returns the
        updated object, or None if the VM is gone (or, when adding, already being deleted: then only
        the labels change)."""
        wanted = (finalizer,) if isinstance(finalizer, str) else finalizer

        def edit(meta: Mapping[str, Any]) -> dict[str, Any] | None:
            fins = list(meta.get("finalizers") or [])
            deleting = bool(meta.get("deletionTimestamp"))
            fins_ok = all((f in fins) == present for f in wanted) or (present and deleting)
            labels_ok = all((meta.get("labels") or {}).get(k) == v for k, v in (labels or {}).items())
            if fins_ok and labels_ok:
                return None
            patch: dict[str, Any] = {}
            if not fins_ok:
                patch["finalizers"] = ([*fins, *(f for f in wanted if f not in fins)] if present
                                       else [f for f in fins if f not in wanted])
            if labels and not labels_ok:
                patch["labels"] = dict(labels)
            return patch

        obj = self.edit_vm_metadata(namespace, name, edit, current)
        if obj is not None and present and not set(wanted) <= set(obj["metadata"].get("finalizers") or []):
            return None  # being deleted: a finalizer can no longer be added
        return obj


class _KubeBase(VMMetadataEdits):
    """Thin, synchronous wrapper; async callers run it in a thread."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.custom = kubeclient.CustomObjectsApi(api)
        self.core = kubeclient.CoreV1Api(api)
        # (object uid, reason, message) of the Events posted lately (at most the newest 8,192).
        self._recent_events = ExpiringKeys(self._EVENT_DEDUPE_SECONDS, limit=8192)
        self._events_lock = threading.Lock()
        # Events are posted off the reconcile path: they must never slow down or fail it.
        self._event_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="events")

    # -- FailoverVMs ---------------------------------------------------------
    def get_vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        return unless_gone(lambda: dict(self.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, FVM, name)))

    def list_vms(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        kw = {"label_selector": label_selector} if label_selector else {}
        res = self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, FVM, **kw)
        return list(res.get("items", []))

    def patch_vm(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, namespace, FVM, name, body))

    def update_vm_status(
        self, namespace: str, name: str, mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
        uid: str | None = None, current: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Apply `mutate(status) -> new status` to a FailoverVM (see update_status)."""
        return update_status(
            lambda: self.get_vm(namespace, name),
            lambda obj: self.custom.replace_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, FVM, name, obj),
            mutate, f"FailoverVM {namespace}/{name}", current=current, uid=uid)

    # -- VFPools and VFClaims --------------------------------------------------
    def list_pools(self) -> list[dict[str, Any]]:
        return list(self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, VFPOOL).get("items", []))

    def get_pool(self, name: str) -> dict[str, Any] | None:
        return unless_gone(lambda: dict(self.custom.get_cluster_custom_object(API_GROUP, API_VERSION, VFPOOL, name)))

    def update_pool_status(self, name: str, mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
                           current: Mapping[str, Any] | None = None) -> None:
        """`current`: the pool as a watch cache has it (a status-only write ignores everything but
        status, so a summary will do): nothing is read or written when `mutate` changes nothing."""
        update_status(
            lambda: self.get_pool(name),
            lambda obj: self.custom.replace_cluster_custom_object_status(API_GROUP, API_VERSION, VFPOOL, name, obj),
            mutate, f"VFPool {name}", attempts=10, current=current)

    # -- VFInventories (one per node, named after it, written by its agent) ---------------------
    def get_inventory(self, node: str) -> dict[str, Any] | None:
        return unless_gone(lambda: dict(self.custom.get_cluster_custom_object(
            API_GROUP, API_VERSION, VFINVENTORY, node)))

    def list_inventories(self) -> list[dict[str, Any]]:
        return list(self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, VFINVENTORY).get("items", []))

    def put_inventory(self, body: dict[str, Any], current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create the node's VFInventory, or replace it (`current`: as last read, for its
        resourceVersion; a conflict is raised for the next round to retry)."""
        if current is None:
            return dict(self.custom.create_cluster_custom_object(API_GROUP, API_VERSION, VFINVENTORY, body))
        obj = dict(body)
        obj["metadata"] = {**dict(body.get("metadata") or {}),
                           "resourceVersion": (current.get("metadata") or {}).get("resourceVersion")}
        return dict(self.custom.replace_cluster_custom_object(
            API_GROUP, API_VERSION, VFINVENTORY, obj["metadata"]["name"], obj))

    def list_claims(self, cached: bool = False, label_selector: str | None = None) -> list[dict[str, Any]]:
        """All VFClaims. `cached`: as the API server's watch cache has them (resourceVersion "0"),
        possibly a few milliseconds behind. A consistent LIST (the default) waits until that cache
        has caught up with etcd, which for a kind that changes as rarely as VFClaims means waiting
        for etcd's next progress notification: up to about 100 ms (measured: 64 ms median on the
        sandbox). Placement reads them cached and relies on the claim's create as the lock."""
        kw: dict[str, str] = {"resource_version": "0"} if cached else {}
        if label_selector:
            kw["label_selector"] = label_selector
        return list(self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, VFCLAIM, **kw).get("items", []))

    def create_claim(self, body: dict[str, Any]) -> bool:
        """Create a VFClaim. Its name is the lock: False if the VF is already claimed."""
        return self._create_lock(VFCLAIM, body)

    def _create_lock(self, plural: str, body: dict[str, Any]) -> bool:
        """Create a cluster-scoped object whose name is a lock: False if it exists already."""
        try:
            self.custom.create_cluster_custom_object(API_GROUP, API_VERSION, plural, body)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def _delete_exact(self, plural: str, name: str, uid: str | None) -> None:
        """Delete a cluster-scoped object (only that exact object when `uid` is given); gone already,
        or replaced by another one of that name, is fine."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self.custom.delete_cluster_custom_object(API_GROUP, API_VERSION, plural, name, body=body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def patch_claim(self, name: str, body: dict[str, Any]) -> None:
        try:
            self.custom.patch_cluster_custom_object(API_GROUP, API_VERSION, VFCLAIM, name, body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_claim(self, name: str, uid: str | None = None) -> None:
        """Delete a VFClaim (only that exact object when `uid` is given)."""
        self._delete_exact(VFCLAIM, name, uid)

    # -- MACLeases: a MAC's uniqueness in its pool, the create is the lock (failovervm.macleases) --------
    def create_mac_lease(self, body: dict[str, Any]) -> bool:
        """Create a MACLease: False if the MAC is already leased (its name is the lock)."""
        return self._create_lock(MACLEASE, body)

    def get_mac_lease(self, name: str) -> dict[str, Any] | None:
        return unless_gone(lambda: dict(self.custom.get_cluster_custom_object(API_GROUP, API_VERSION, MACLEASE, name)))

    def list_mac_leases(self) -> list[dict[str, Any]]:
        return list(self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, MACLEASE).get("items", []))

    def delete_mac_lease(self, name: str, uid: str | None = None) -> None:
        """Delete a MACLease (only that exact object when `uid` is given)."""
        self._delete_exact(MACLEASE, name, uid)

    # -- Nodes ---------------------------------------------------------------------
    def list_nodes(self) -> list[dict[str, Any]]:
        return list(dict(self.core.list_node()).get("items", []))

    def get_node(self, name: str) -> dict[str, Any] | None:
        return unless_gone(lambda: dict(self.core.read_node(name)))

    def get_namespace(self, name: str) -> dict[str, Any] | None:
        return unless_gone(lambda: dict(self.core.read_namespace(name)))

    def patch_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a Node (the CLI's cordon)."""
        return dict(self.core.patch_node(name, body))

    def patch_node_status(self, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch (RFC 7386) of the nodes/status subresource: only the keys in `body`
        change, a None value removes its key. Returns the Node as patched, None if it is gone."""
        return unless_gone(lambda: dict(
            self.core.patch_node_status(name, body, content_type=kubeclient.MERGE_PATCH)))

    # -- Pods (VM pods, in the VMs' namespaces) --------------------------------------------

    def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a pod; the API server's refusal (409 AlreadyExists, 403 quota or Pod Security, 422
        invalid) is raised as ApiException for the caller to read (api_error_message)."""
        return dict(self.core.create_namespaced_pod(body["metadata"]["namespace"], body))

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return unless_gone(lambda: dict(self.core.read_namespaced_pod(name, namespace)))

    def list_pods(self, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        kw = {"label_selector": label_selector} if label_selector else {}
        res = (self.core.list_namespaced_pod(namespace, **kw) if namespace
               else self.core.list_pod_for_all_namespaces(**kw))
        return list(dict(res).get("items") or [])

    def patch_pod(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch of a pod (a resourceVersion in it is a precondition: 409 when stale).
        None when the pod is gone."""
        return unless_gone(lambda: dict(self.core.patch_namespaced_pod(
            name, namespace, body, content_type=kubeclient.MERGE_PATCH)))

    def delete_pod(self, namespace: str, name: str, grace_period: int | None = None,
                   uid: str | None = None) -> bool:
        """Delete a pod (grace 0: at once; nothing waits for a kubelet), only that exact pod when
        `uid` is given. True if it was deleted, False if it was gone (or, with `uid`, replaced)."""
        body: dict[str, Any] = {}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body or None, grace_period_seconds=grace_period)
            return True
        except ApiException as exc:
            if exc.status == 404 or (exc.status == 409 and uid):
                return False
            raise

    # -- Events --------------------------------------------------------------------
    _EVENT_DEDUPE_SECONDS = 300.0

    def event(
        self, obj: Mapping[str, Any], reason: str, note: str, *, type_: str = "Normal", action: str = "Reconcile",
        component: str = "failovervm",
    ) -> None:
        """Post a core/v1 Event about `obj` (shown by kubectl describe / get events).

        The same (object, reason, message) is posted at most once per 5 minutes by this
        process, so a retry loop cannot flood the API. Failures are logged, never raised.
        """
        meta = obj.get("metadata", {})
        key = (meta.get("uid"), reason, note)
        with self._events_lock:
            if key in self._recent_events:
                return
            self._recent_events.add(key)
        namespace = meta.get("namespace") or "default"
        stamp = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": note[:1024],
            "type": type_,
            "action": action,
            "source": {"component": component},
            "reportingComponent": f"{API_GROUP}/{component.split('/')[0]}",
            "reportingInstance": component,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self._event_pool.submit(self._post_event, namespace, body, reason, str(meta.get("name")))

    def _post_event(self, namespace: str, body: dict[str, Any], reason: str, name: str) -> None:
        try:
            self.core.create_namespaced_event(namespace, body)
        except Exception as exc:
            log.warning("could not post event %s on %s: %s", reason, name, exc)


class MigrationsMixin:
    """FailoverVMMigration operations (mixed into Kube below)."""

    custom: Any

    def get_migration(self, namespace: str, name: str) -> dict[str, Any] | None:
        return unless_gone(lambda: dict(self.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, FVMM, name)))

    def list_migrations(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            res = self.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, FVMM)
        else:
            res = self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, FVMM)
        return list(res.get("items", []))

    def delete_migration(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, FVMM, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def create_migration(self, body: dict[str, Any]) -> dict[str, Any]:
        ns = body["metadata"]["namespace"]
        return dict(self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, FVMM, body))

    def create_migration_once(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create a migration with a fixed name; None when one of that name exists already."""
        try:
            return self.create_migration(body)
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def update_migration_status(
        self, namespace: str, name: str, mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        return update_status(
            lambda: self.get_migration(namespace, name),
            lambda obj: self.custom.replace_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, FVMM, name, obj),
            mutate, f"migration {namespace}/{name}")

class Kube(_KubeBase, MigrationsMixin):
    """The Kubernetes adapter used by the controller, the agents and the CLI."""
