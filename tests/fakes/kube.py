"""FakeKube: the Kubernetes API of the operator (`failovervm.kube.KubeAPI`) in memory.

Objects live in plain dicts keyed like the API (`vms[namespace, name]`, `migrations[namespace, name]`,
`pools[name]`, `claims[name]`, `nodes[name]`, `pods[namespace, name]`). Every write gets a new
resourceVersion; status writes run the production read-modify-write (`kube.update_status`, and
`kube.VMMetadataEdits` for metadata and finalizers) against a replace/patch that answers 404 and 409
like the API server, so a stale `current=` costs a conflict and a retry as it does in a cluster.

What a real API server also does, and this one too: a merge patch of the main resource ignores
`status` and bumps `metadata.generation` when `spec` changes; deleting an object with finalizers
only sets `deletionTimestamp`, and removing its last finalizer then deletes it.

Tests read the stored objects directly (`kube.vms["ns", "vm"]["status"]`), and change them through
the API methods (`patch_vm`, `update_vm_status`, ...) or the `add_*` helpers. Events are recorded in
`events` (every call: no de-duplication, so a test sees what the logic posts); every other API call in
`calls`, with its arguments (`calls_of("delete_migration") == [("ns", "m1")]`), failed ones too.
`fail(method, *errors)` makes the next calls of a method raise; `before(method, *hooks)` runs a hook
first (another writer landing just before, say); `admit(kind, obj)` is what the API server does to a
written object (identity here; override it to act like an older CRD schema that prunes a field).
The API calls take one lock, as the API server serialises writes: the controller's threads may share
one FakeKube.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, Self, TypeVar

from failovervm import API_GROUP, API_VERSION
from failovervm.conditions import now_iso
from failovervm.kube import ApiException, KubeAPI, VMMetadataEdits, update_status
from tests.fakes.failures import Failures, P, R, failable

K = TypeVar("K")
FK = TypeVar("FK", bound="FakeKube")
KINDS = {"failovervms": "FailoverVM", "failovervmmigrations": "FailoverVMMigration", "vfpools": "VFPool",
         "vfclaims": "VFClaim", "vfinventories": "VFInventory", "nodes": "Node", "pods": "Pod",
         "namespaces": "Namespace", "macleases": "MACLease"}
Obj = dict[str, Any]
Mutate = Callable[[Obj], Obj | None]


@dataclass(frozen=True)
class RecordedEvent:
    """One `event(...)` call: the object it is about, and its fields."""

    kind: str | None
    namespace: str | None
    name: str | None
    uid: str | None
    reason: str
    note: str
    type: str
    action: str
    component: str


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the client sends for a dict body): None removes a key,
    objects merge, everything else (lists too) replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def matches(labels: Mapping[str, str], selector: str | None) -> bool:
    """A label selector string: `k=v`, `k==v`, `k!=v`, `k` and `!k`, comma-separated."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def node(name: str, *, labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
         ready: bool = True) -> Obj:
    """A minimal Node object for `FakeKube.add_node`."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels or {}), "annotations": dict(annotations or {})},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _api_error(status: int, reason: str) -> ApiException:
    return ApiException(status=status, reason=reason)


class LiveIndex(Mapping[Any, list[Obj]]):
    """One of the controller's watch indexes over a FakeKube's stored objects (FakeKube.live_indexes)."""

    def __init__(self, kube: FakeKube, name: str) -> None:
        self.kube, self.name = kube, name

    def _now(self) -> dict[Any, list[Obj]]:
        return self.kube.indexes()[self.name]

    def __getitem__(self, key: Any) -> list[Obj]:
        return self._now()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())


@dataclass(frozen=True)
class KubeCall:
    """One API call: the method and its arguments as sent (defaults filled in, bodies copied)."""

    method: str
    args: tuple[Any, ...]


def api(method: Callable[Concatenate[FK, P], R]) -> Callable[Concatenate[FK, P], R]:
    """An API call: listed in `calls` (failed ones too), then @failable, under the fake's lock."""
    checked = failable(method)
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self: FK, /, *args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        sent = tuple(copy.deepcopy(a) if isinstance(a, dict | list) else a for a in bound.arguments.values())
        with self._lock:
            self.calls.append(KubeCall(method.__name__, sent[1:]))
            return checked(self, *args, **kwargs)

    return call


class FakeKube(VMMetadataEdits, Failures):
    def __init__(self) -> None:
        super().__init__()
        self.vms: dict[tuple[str, str], Obj] = {}
        self.migrations: dict[tuple[str, str], Obj] = {}
        self.pools: dict[str, Obj] = {}
        self.claims: dict[str, Obj] = {}
        self.mac_leases: dict[str, Obj] = {}
        self.inventories: dict[str, Obj] = {}
        self.nodes: dict[str, Obj] = {}
        self.namespaces: dict[str, Obj] = {}
        self.pods: dict[tuple[str, str], Obj] = {}
        self.events: list[RecordedEvent] = []
        self.calls: list[KubeCall] = []
        self._version = 0
        self._lock = threading.RLock()

    # -- test controls -------------------------------------------------------------------------
    def admit(self, kind: str, obj: Obj) -> Obj:
        """What the API server keeps of a written object (`kind` as in kube.py: "failovervms", ...)."""
        return obj

    def reasons(self) -> list[str]:
        """The reasons of the recorded Events, in order."""
        return [e.reason for e in self.events]

    def calls_of(self, method: str) -> list[tuple[Any, ...]]:
        """The arguments of each call of `method`, in order."""
        return [c.args for c in self.calls if c.method == method]

    def add_vm(self, obj: Mapping[str, Any]) -> Obj:
        return self._create("failovervms", self.vms, (obj["metadata"]["namespace"], obj["metadata"]["name"]), obj)

    def add_migration(self, obj: Mapping[str, Any]) -> Obj:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        return self._create("failovervmmigrations", self.migrations, key, obj)

    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        body = {"metadata": {"name": name, "labels": dict(labels or {})}}
        return self._create("namespaces", self.namespaces, name, body)

    def add_pool(self, obj: Mapping[str, Any]) -> Obj:
        """A VFPool. VFs listed in its status.nodes (the layout of earlier versions, which tests use
        to say which VFs the pool has where) are stored as the VFInventories of those nodes, as
        their agents publish them now; the pool keeps the rest of its status."""
        obj = copy.deepcopy(dict(obj))
        name = obj["metadata"]["name"]
        for entry in (obj.get("status") or {}).pop("nodes", None) or []:
            self.add_inventory_pool(str(entry["node"]), name, entry.get("vfs") or [],
                                    simulated=bool(entry.get("simulated")))
        return self._create("vfpools", self.pools, name, obj)

    def add_inventory_pool(self, node: str, pool: str, vfs: Iterable[Mapping[str, Any]], *,
                           simulated: bool = False) -> Obj:
        """Set `pool`'s VFs in `node`'s VFInventory (created when missing)."""
        inv = self.inventories.get(node) or {"metadata": {"name": node}, "spec": {"nodeName": node, "pools": []}}
        inv = copy.deepcopy(inv)
        pools = [p for p in inv["spec"]["pools"] if p.get("name") != pool]
        vfs = [dict(v) for v in vfs]
        pools.append({"name": pool, "vfs": vfs, "total": len(vfs), "simulated": simulated})
        inv["spec"]["pools"] = sorted(pools, key=lambda p: str(p["name"]))
        if node in self.inventories:
            return self._store("vfinventories", self.inventories, node, inv)
        return self._create("vfinventories", self.inventories, node, inv)

    def live_indexes(self) -> dict[str, Mapping[Any, list[Obj]]]:
        """The same, read afresh on every access (the objects as stored at that moment), as Kopf's
        indexes follow their watches; no API call is recorded."""
        from failovervm.controller import cache

        return {name: LiveIndex(self, name) for name in cache.INDEX_NAMES}

    def indexes(self) -> dict[str, dict[Any, list[Obj]]]:
        """The controller's watch indexes (controller.cache) as Kopf would hold them for the objects
        stored now: plain dicts for `IndexedCache`."""
        from failovervm import macleases
        from failovervm.controller import cache

        out: dict[str, dict[Any, list[Obj]]] = {name: {} for name in cache.INDEX_NAMES}

        def put(index: str, keyed: Mapping[Any, Obj]) -> None:
            for key, value in keyed.items():
                out[index].setdefault(key, []).append(value)

        for vm in self.vms.values():
            put(cache.VMS, cache.vm_keys(vm))
        for claim in self.claims.values():
            put(cache.CLAIMS, cache.claim_keys(claim))
        for lease in self.mac_leases.values():
            put(cache.MAC_LEASES, macleases.lease_keys(lease))
        for name, pool in self.pools.items():
            put(cache.POOLS, {name: cache.pool_summary(pool)})
        for name, inv in self.inventories.items():
            put(cache.INVENTORIES, {name: cache.inventory_summary(inv)})
        for name, node_obj in self.nodes.items():
            put(cache.NODES, {name: cache.node_summary(node_obj)})
        return out

    def add_claim(self, obj: Mapping[str, Any]) -> Obj:
        return self._create("vfclaims", self.claims, obj["metadata"]["name"], obj)

    def add_node(self, obj: Mapping[str, Any]) -> Obj:
        return self._create("nodes", self.nodes, obj["metadata"]["name"], obj)

    def add(self, *, nodes: Iterable[Mapping[str, Any]] = (), pools: Iterable[Mapping[str, Any]] = (),
            vms: Iterable[Mapping[str, Any]] = (), migrations: Iterable[Mapping[str, Any]] = (),
            claims: Iterable[Mapping[str, Any]] = ()) -> Self:
        """Several objects at once, through the add_* helpers; returns this fake."""
        for add, objs in ((self.add_node, nodes), (self.add_pool, pools), (self.add_vm, vms),
                          (self.add_migration, migrations), (self.add_claim, claims)):
            for obj in objs:
                add(obj)
        return self

    def delete_vm(self, namespace: str, name: str) -> bool:
        """What `kubectl delete` does (not part of KubeAPI): with finalizers, only mark it deleted."""
        return self._delete(self.vms, (namespace, name))

    # -- FailoverVMs ---------------------------------------------------------------------------
    @api
    def get_vm(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.vms, (namespace, name))

    @api
    def list_vms(self, label_selector: str | None = None) -> list[Obj]:
        return self._list(self.vms, label_selector)

    @api
    def patch_vm(self, namespace: str, name: str, body: dict[str, Any]) -> Obj:
        return self._patch("failovervms", self.vms, (namespace, name), body)

    @api
    def update_vm_status(self, namespace: str, name: str, mutate: Mutate, uid: str | None = None,
                         current: Mapping[str, Any] | None = None) -> Obj | None:
        return update_status(
            lambda: self.get_vm(namespace, name),
            lambda obj: self._replace_status("failovervms", self.vms, (namespace, name), obj),
            mutate, f"FailoverVM {namespace}/{name}", current=current, uid=uid)

    # -- VFPools and VFClaims ------------------------------------------------------------------
    @api
    def list_pools(self) -> list[Obj]:
        return self._list(self.pools)

    @api
    def get_pool(self, name: str) -> Obj | None:
        return self._get(self.pools, name)

    @api
    def update_pool_status(self, name: str, mutate: Mutate, current: Mapping[str, Any] | None = None) -> None:
        update_status(lambda: self._get(self.pools, name),
                      lambda obj: self._replace_status("vfpools", self.pools, name, obj),
                      mutate, f"VFPool {name}", attempts=10, current=current)

    @api
    def get_inventory(self, node: str) -> Obj | None:
        return self._get(self.inventories, node)

    @api
    def list_inventories(self) -> list[Obj]:
        return self._list(self.inventories)

    @api
    def put_inventory(self, body: dict[str, Any], current: Mapping[str, Any] | None = None) -> Obj:
        name = body["metadata"]["name"]
        stored = self.inventories.get(name)
        if current is None:
            if stored is not None:
                raise _api_error(409, "AlreadyExists")
            return copy.deepcopy(self._create("vfinventories", self.inventories, name, body))
        if stored is None:
            raise _api_error(404, "NotFound")
        if (current.get("metadata") or {}).get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise _api_error(409, "Conflict")
        new = copy.deepcopy(dict(body))
        new["metadata"] = {**stored["metadata"], **{k: v for k, v in (body.get("metadata") or {}).items()
                                                    if k in ("labels", "ownerReferences")}}
        new.setdefault("kind", "VFInventory")
        new.setdefault("apiVersion", f"{API_GROUP}/{API_VERSION}")
        return self._store("vfinventories", self.inventories, name, new)

    @api
    def list_claims(self, cached: bool = False, label_selector: str | None = None) -> list[Obj]:
        return self._list(self.claims, label_selector)

    @api
    def create_claim(self, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if name in self.claims:
            return False
        self._create("vfclaims", self.claims, name, body)
        return True

    @api
    def patch_claim(self, name: str, body: dict[str, Any]) -> None:
        if name in self.claims:
            self._patch("vfclaims", self.claims, name, body)

    @api
    def delete_claim(self, name: str, uid: str | None = None) -> None:
        self._delete(self.claims, name, uid)

    @api
    def create_mac_lease(self, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if name in self.mac_leases:
            return False
        self._create("macleases", self.mac_leases, name, body)
        return True

    @api
    def get_mac_lease(self, name: str) -> Obj | None:
        return copy.deepcopy(self.mac_leases.get(name))

    @api
    def list_mac_leases(self) -> list[Obj]:
        return self._list(self.mac_leases, None)

    @api
    def delete_mac_lease(self, name: str, uid: str | None = None) -> None:
        self._delete(self.mac_leases, name, uid)

    # -- Nodes and Pods ------------------------------------------------------------------------
    @api
    def list_nodes(self) -> list[Obj]:
        return self._list(self.nodes)

    @api
    def get_node(self, name: str) -> Obj | None:
        return self._get(self.nodes, name)

    @api
    def get_namespace(self, name: str) -> Obj | None:
        return self._get(self.namespaces, name)

    @api
    def patch_node(self, name: str, body: dict[str, Any]) -> Obj:
        return self._patch("nodes", self.nodes, name, body)

    @api
    def delete_pod(self, namespace: str, name: str, grace_period: int | None = None, uid: str | None = None) -> bool:
        return self._delete(self.pods, (namespace, name), uid)

    # -- Events --------------------------------------------------------------------------------
    def event(self, obj: Mapping[str, Any], reason: str, note: str, *, type_: str = "Normal",
              action: str = "Reconcile", component: str = "failovervm") -> None:
        meta = obj.get("metadata") or {}
        self.events.append(RecordedEvent(obj.get("kind"), meta.get("namespace"), meta.get("name"), meta.get("uid"),
                                         reason, note, type_, action, component))

    # -- FailoverVMMigrations ------------------------------------------------------------------
    @api
    def get_migration(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.migrations, (namespace, name))

    @api
    def list_migrations(self, namespace: str | None = None) -> list[Obj]:
        return [m for m in self._list(self.migrations) if namespace is None or m["metadata"]["namespace"] == namespace]

    @api
    def delete_migration(self, namespace: str, name: str) -> None:
        self._delete(self.migrations, (namespace, name))

    @api
    def create_migration(self, body: dict[str, Any]) -> Obj:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.migrations:
            raise _api_error(409, "AlreadyExists")
        return self._create("failovervmmigrations", self.migrations, key, body)

    @api
    def create_migration_once(self, body: dict[str, Any]) -> Obj | None:
        if (body["metadata"]["namespace"], body["metadata"]["name"]) in self.migrations:
            return None
        return self.create_migration(body)

    @api
    def update_migration_status(self, namespace: str, name: str, mutate: Mutate) -> Obj | None:
        return update_status(
            lambda: self._get(self.migrations, (namespace, name)),
            lambda obj: self._replace_status("failovervmmigrations", self.migrations, (namespace, name), obj),
            mutate, f"migration {namespace}/{name}")

    # -- the in-memory API server --------------------------------------------------------------
    def _store(self, kind: str, store: dict[K, Obj], key: K, obj: Obj) -> Obj:
        admitted = self.admit(kind, copy.deepcopy(obj))
        self._version += 1
        admitted["metadata"]["resourceVersion"] = str(self._version)
        store[key] = admitted
        return copy.deepcopy(admitted)

    def _create(self, kind: str, store: dict[K, Obj], key: K, obj: Mapping[str, Any]) -> Obj:
        new = copy.deepcopy(dict(obj))
        meta = new.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        new.setdefault("kind", KINDS[kind])
        if kind not in ("nodes", "pods", "namespaces"):
            new.setdefault("apiVersion", f"{API_GROUP}/{API_VERSION}")
            meta.setdefault("generation", 1)
        self._store(kind, store, key, new)
        return store[key]

    @staticmethod
    def _get(store: dict[K, Obj], key: K) -> Obj | None:
        obj = store.get(key)
        return copy.deepcopy(obj) if obj is not None else None

    @staticmethod
    def _list(store: dict[K, Obj], label_selector: str | None = None) -> list[Obj]:
        return [copy.deepcopy(o) for o in store.values()
                if matches(o["metadata"].get("labels") or {}, label_selector)]

    def _replace_status(self, kind: str, store: dict[K, Obj], key: K, obj: Mapping[str, Any]) -> Obj:
        """PUT .../status: only the status changes; a stale resourceVersion is a conflict."""
        cur = store.get(key)
        if cur is None:
            raise _api_error(404, "NotFound")
        meta, stored = obj["metadata"], cur["metadata"]
        if meta.get("resourceVersion") != stored["resourceVersion"] or meta.get("uid") != stored["uid"]:
            raise _api_error(409, "Conflict")
        new = copy.deepcopy(cur)
        new["status"] = copy.deepcopy(obj.get("status") or {})
        return self._store(kind, store, key, new)

    def _patch(self, kind: str, store: dict[K, Obj], key: K, body: Mapping[str, Any]) -> Obj:
        """PATCH (merge) of the main resource, with resourceVersion as a precondition when given
        (generation, for the kinds that have one, counts spec changes)."""
        cur = store.get(key)
        if cur is None:
            raise _api_error(404, "NotFound")
        patch = copy.deepcopy(dict(body))
        patch.pop("status", None)
        want = (patch.get("metadata") or {}).pop("resourceVersion", None)
        if want is not None and want != cur["metadata"]["resourceVersion"]:
            raise _api_error(409, "Conflict")
        new = merge_patch(cur, patch)
        if new.get("spec") != cur.get("spec") and "generation" in cur["metadata"]:
            new["metadata"]["generation"] = int(cur["metadata"].get("generation") or 0) + 1
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            del store[key]
            return dict(new)
        return self._store(kind, store, key, new)

    def _delete(self, store: dict[K, Obj], key: K, uid: str | None = None) -> bool:
        cur = store.get(key)
        if cur is None or (uid is not None and cur["metadata"]["uid"] != uid):
            return False
        if cur["metadata"].get("finalizers"):
            cur["metadata"].setdefault("deletionTimestamp", now_iso())
            self._version += 1
            cur["metadata"]["resourceVersion"] = str(self._version)
        else:
            del store[key]
        return True

    # -- Node status (the agent's extended resources) ------------------------------------------
    @api
    def patch_node_status(self, name: str, body: dict[str, Any]) -> Obj | None:
        """PATCH nodes/{name}/status (merge patch): only `status` changes, None removes a key. Like the
        API server, an extended resource (a domain-qualified name outside kubernetes.io) in
        capacity/allocatable must be a whole non-negative number (422 otherwise)."""
        cur = self.nodes.get(name)
        if cur is None:
            return None
        status = merge_patch(cur.get("status") or {}, copy.deepcopy((body or {}).get("status") or {}))
        for field in ("capacity", "allocatable"):
            for key, value in (status.get(field) or {}).items():
                extended = "/" in key and not key.split("/", 1)[0].endswith("kubernetes.io")
                if extended and not str(value).isdigit():
                    raise _api_error(422, f"Invalid: status.{field}[{key}]: must be an integer, not {value!r}")
        new = copy.deepcopy(cur)
        new["status"] = status
        return self._store("nodes", self.nodes, name, new)
    # -- Pods (VM pods) ------------------------------------------------------------------------
    @api
    def create_pod(self, body: dict[str, Any]) -> Obj:
        """POST a pod: 409 AlreadyExists when the name is taken (fail("create_pod", ...) stands for
        an admission refusal such as a ResourceQuota's 403). Unbound pods start Pending."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.pods:
            raise _api_error(409, "AlreadyExists")
        new = copy.deepcopy(body)
        new["metadata"].setdefault("creationTimestamp", now_iso())
        new.setdefault("status", {"phase": "Pending"})
        return copy.deepcopy(self._create("pods", self.pods, key, new))

    @api
    def get_pod(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.pods, (namespace, name))

    @api
    def list_pods(self, namespace: str | None = None, label_selector: str | None = None) -> list[Obj]:
        return [p for p in self._list(self.pods, label_selector)
                if namespace is None or p["metadata"]["namespace"] == namespace]

    @api
    def patch_pod(self, namespace: str, name: str, body: dict[str, Any]) -> Obj | None:
        if (namespace, name) not in self.pods:
            return None
        return self._patch("pods", self.pods, (namespace, name), body)

    # What kube-scheduler does to a pod (test controls, not part of KubeAPI).
    def bind_pod(self, namespace: str, name: str, node: str) -> Obj:
        """kube-scheduler binds the pod to `node`."""
        pod = self.pods[namespace, name]
        pod["spec"]["nodeName"] = node
        pod.setdefault("status", {})["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        return self._store("pods", self.pods, (namespace, name), pod)

    def pod_unschedulable(self, namespace: str, name: str, message: str) -> Obj:
        """kube-scheduler found no node for the pod."""
        pod = self.pods[namespace, name]
        pod.setdefault("status", {})["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]
        return self._store("pods", self.pods, (namespace, name), pod)


_: KubeAPI = FakeKube()
