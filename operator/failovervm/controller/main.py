"""`failovervm controller`: the Kopf operator.

Every Kopf registration of the controller is in this module. Each handler only unpacks Kopf's
arguments and calls the controller's domain modules with the ControllerContext that `run` puts
into Kopf's memo (per-object memos are shallow copies: all handlers share the one context).
Handler ids are the function names (or the explicit id=): Kopf stores its progress on objects
under these ids, and serves the validating webhooks at /<id> (the Helm chart and the sandbox
register those paths), so none of them may change."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from failovervm import API_GROUP, API_VERSION, gcstats, macleases, malloc, memdebug, vmpod, webhookcerts
from failovervm import kube as kube_mod
from failovervm import labels as fvm_labels
from failovervm.controller import (
    admission,
    cache,
    evacuation,
    ha,
    kopftoggles,
    kopfviews,
    leases,
    migrations,
    policies,
    recovery,
    sweeps,
    tenancy,
    vmpods,
    vms,
)
from failovervm.controller.context import ControllerContext, ControllerSettings
from failovervm.controller.isolation import isolated
from failovervm.labels import AGENT_FINALIZER, CONTROLLER_FINALIZER, DEFAULT_IMAGE, KOPF_ANNOTATION_PREFIX, PEERING_NAME
from failovervm.logs import configure as configure_logs
from failovervm.metrics import start_metrics
from failovervm.migration import Limits
from failovervm.storage import StorageGrant
from failovervm.vmpod import PodSettings

log = logging.getLogger(__name__)
FVM = (API_GROUP, API_VERSION, "failovervms")
FVMM = (API_GROUP, API_VERSION, "failovervmmigrations")
POOL = (API_GROUP, API_VERSION, "vfpools")
CLAIM = (API_GROUP, API_VERSION, "vfclaims")
MACLEASE = (API_GROUP, API_VERSION, "macleases")
INVENTORY = (API_GROUP, API_VERSION, "vfinventories")
POLICY = (API_GROUP, API_VERSION, "failovermigrationpolicies")


@dataclass
class ControllerArgs:
    kubeconfig: str | None
    storage_roots: list[str]
    webhook_host: str | None
    webhook_port: int
    webhook_cert_dir: str | None
    webhook_managed: bool
    metrics_port: int
    health_port: int | None
    peering: bool = True
    namespace: str = "failovervm-system"
    parallel_migrations_per_cluster: int = 5
    parallel_outbound_migrations_per_node: int = 2
    vm_pod_image: str = DEFAULT_IMAGE
    vm_overhead_cpu: str = "100m"
    vm_overhead_memory: str = "160Mi"
    log_format: str = "text"
    require_failover_ready: bool = False
    migration_history: int = 5
    handover_timeout_seconds: int = 120
    # Kopf peering: this replica's priority (None: by start time, the oldest replica is active)
    # and how long a dead replica's entry blocks the others (controller.ha).
    priority: int | None = None
    peering_lifetime: int = ha.DEFAULT_PEERING_LIFETIME
    storage_grants: list[StorageGrant] = field(default_factory=list)
    migration_start_timeout_seconds: int = 300


def controller_settings(args: ControllerArgs) -> ControllerSettings:
    return ControllerSettings(
        storage_roots=tuple(str(Path(r).resolve()) for r in args.storage_roots),
        storage_grants=tuple(args.storage_grants),
        namespace=args.namespace,
        vm_pod=PodSettings(image=args.vm_pod_image, overhead_cpu=args.vm_overhead_cpu,
                           overhead_memory=args.vm_overhead_memory),
        require_failover_ready=args.require_failover_ready,
        migration_history=args.migration_history,
        handover_timeout_seconds=args.handover_timeout_seconds,
        limits=Limits(per_cluster=args.parallel_migrations_per_cluster,
                      per_node_outbound=args.parallel_outbound_migrations_per_node,
                      start_timeout=args.migration_start_timeout_seconds),
    )


# How often the webhook's certificate files are checked for a renewal (cert-manager, a rotated Secret).
CERT_CHECK_SECONDS = 5.0


class ReloadingWebhookServer(kopf.WebhookServer):
    """Kopf's webhook server whose certificate is reloaded in its live SSL context when the files
    change (webhookcerts.CertReloader), instead of Kopf's own stop-and-restart of the server (which
    leaves the port closed meanwhile, and fails for good on a half-written pair)."""

    reloader: webhookcerts.CertReloader | None = None
    reload_task: asyncio.Task[None] | None = None

    def _build_ssl(self) -> tuple[bytes | None, Any]:
        cadata, context = super()._build_ssl()
        if context is not None and self.certfile and self.pkeyfile:
            if self.reloader is None:
                self.reloader = webhookcerts.CertReloader(context, str(self.certfile), str(self.pkeyfile))
                self.reload_task = asyncio.get_running_loop().create_task(self.reloader.run(CERT_CHECK_SECONDS))
            self.reloader.context = context
        return cadata, context


def _webhook_server(args: ControllerArgs) -> kopf.WebhookServer:
    assert args.webhook_host
    ca, crt, key = webhookcerts.ensure(Path(args.webhook_cert_dir or "/tmp/failovervm-webhook"), args.webhook_host)
    return ReloadingWebhookServer(
        addr=args.webhook_host, port=args.webhook_port, host=args.webhook_host,
        certfile=str(crt), pkeyfile=str(key), cafile=str(ca),
        file_check_interval=365 * 24 * 3600.0,  # Kopf's restart-on-change: replaced by the reloader
    )


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: the controller has no on.create, on.update, on.resume or on.field handler, so
    Kopf has no change to detect. With a real one it patches its last-handled-configuration
    annotation onto every FailoverVM and migration when first seen and again whenever their spec,
    labels or annotations change (two PATCHes per placed VM, each through the admission webhook and
    to every watcher), and deep-copies every object on every event to compare. Deletions and
    finalizers do not depend on it. An annotation an earlier version stored is left alone."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def run(args: ControllerArgs) -> int:
    malloc.limit_arenas()
    memdebug.install()
    memdebug.install_census()
    gcstats.install()
    configure_logs("controller", None, args.log_format)
    if not kopfviews.install():
        log.warning("Kopf's body and patch views still form reference cycles (a Kopf upgrade?): every "
                    "watch event waits for the cyclic garbage collector (failovervm/controller/kopfviews.py)")
    if not kopftoggles.install():
        log.warning("Kopf's index pre-population wakes every waiting object on every object indexed (a Kopf "
                    "upgrade?): a start over many objects costs CPU quadratic in them "
                    "(failovervm/controller/kopftoggles.py)")
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    kube = kube_mod.Kube(kube_mod.load(args.kubeconfig))
    ctx = ControllerContext(controller_settings(args), kube)
    priority = (args.priority if args.priority is not None else ha.peering_priority()) if args.peering else None
    keepalive = None
    if priority is not None:
        ctx.active = ha.ActiveCheck(lambda: kube.custom.get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", PEERING_NAME), priority)
        ctx.tenancy.active = ctx.active
        # A standby answers admission too, with its Kopf indexes paused: its MACs come from a watch of
        # its own, started now so that it is in sync before it is needed (the active replica stops it).
        ctx.tenancy.standby_macs = lambda: tenancy.MacWatch(kube.api)
        ctx.tenancy.standby_watch()
        # Kopf takes its peering identity from $POD_ID too: the keep-alive thread renews that entry.
        os.environ["POD_ID"] = identity = ha.own_identity(os.environ)
        keepalive = ha.KeepAlive(lambda body: kube.custom.patch_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", PEERING_NAME, body), identity, priority, args.peering_lifetime)
    start_metrics(args.metrics_port)
    gcstats.tune(os.environ)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(kopf.operator(
        clusterwide=True,
        peering_name=PEERING_NAME if args.peering else None,
        standalone=not args.peering,
        priority=priority,
        liveness_endpoint=liveness,
        memo=kopf.Memo(ctx=ctx, args=args, keepalive=keepalive),
    ))
    return 0


# -- the operator itself -------------------------------------------------------------------------
def _ctx(memo: kopf.Memo, indices: dict[str, Any] | None = None) -> ControllerContext:
    """The context `run` put into the memo (every handler's memo is a shallow copy of it). Kopf
    hands its indices to every handler as keyword arguments: the first one seen binds the VM pod
    index and the watch caches (controller.cache) to the context (they are the same objects for
    the operator's whole life)."""
    ctx = memo.ctx
    assert isinstance(ctx, ControllerContext)
    index = (indices or {}).get("vm_pods")
    if index is not None and not isinstance(ctx.pods, vmpods.IndexedPods):
        ctx.pods = vmpods.IndexedPods(index)
    if not isinstance(ctx.cache, cache.IndexedCache) and all(n in (indices or {}) for n in cache.INDEX_NAMES):
        ctx.cache = cache.IndexedCache({n: (indices or {})[n] for n in cache.INDEX_NAMES})
    policy_index, ns_index = (indices or {}).get("migration_policies"), (indices or {}).get("namespace_labels")
    if policy_index is not None and ns_index is not None and not isinstance(ctx.policies, policies.IndexedPolicies):
        ctx.policies = policies.IndexedPolicies(policy_index, ns_index)
    ctx.tenancy.bind(indices or {})
    return ctx


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # The `kubernetes` package (which Kopf's client piggybacking would use) is not installed (see
    # failovervm.kubeclient): Kopf's own loaders, the ServiceAccount in-cluster, else the kubeconfig.
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    args: ControllerArgs = memo.args
    settings.persistence.finalizer = CONTROLLER_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    # Kopf logs every handler, timer and webhook call that succeeds at INFO: about 50 lines per VM in
    # the scale benchmark (docs/scale.md). Failures and retries are WARNING and still logged.
    for name in ("kopf.objects", "aiohttp.access"):
        debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    settings.execution.max_workers = 16
    memo.executor = settings.execution.executor  # the async handlers' blocking work (_in_thread)
    settings.watching.server_timeout = 300
    # Only VM pods, filtered by the API server: every handler and index on pods selects them by
    # this label anyway, and without it the controller would receive, parse and remember every
    # pod of the cluster (150,000 at 5,000 nodes) to throw nearly all of them away. The eviction
    # webhook does not depend on the watch.
    settings.watching.label_selectors["", "v1", "pods"] = fvm_labels.VM_UID_LABEL
    settings.networking.request_timeout = 60
    settings.peering.lifetime = args.peering_lifetime
    if args.webhook_host:
        settings.admission.server = _webhook_server(args)
        if args.webhook_managed:
            settings.admission.managed = API_GROUP


@kopf.on.startup()
async def start_keepalive(memo: kopf.Memo, **_: Any) -> None:
    """The peering keep-alive thread (controller.ha.KeepAlive), and the task that tells it the event
    loop still runs."""
    keepalive: ha.KeepAlive | None = memo.get("keepalive")
    if keepalive is None:
        return

    async def ticker() -> None:
        while not keepalive.stopped.is_set():
            keepalive.tick()
            await asyncio.sleep(1.0)

    memo.keepalive_ticker = asyncio.get_running_loop().create_task(ticker())
    keepalive.start()


@kopf.on.cleanup()
async def stop_keepalive(memo: kopf.Memo, **_: Any) -> None:
    keepalive: ha.KeepAlive | None = memo.get("keepalive")
    if keepalive is not None:
        await asyncio.to_thread(keepalive.stop)


# -- FailoverVM ----------------------------------------------------------------------------------
async def _in_thread(memo: kopf.Memo, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run blocking domain work (API calls) in Kopf's handler threads. The handlers below answer
    what needs no API call on the event loop and come here only for the rest: a sync handler
    waits for one of the 16 threads, with its event's body, even when it has nothing to do, and
    thousands of events arrive at once when the controller starts over 1,000 VMs and their pods
    or during a burst of creates (docs/scale.md)."""
    executor = memo.get("executor")
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args, **kwargs))


@kopf.on.event(*FVM)
async def on_vm_event(*, type: str, name: str, namespace: str | None, status: kopf.Status, meta: kopf.Meta,
                      body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    if namespace is None:
        return
    ctx = _ctx(memo, kw)
    if type == "DELETED":
        uid = str(meta.get("uid"))
        vms.forget(ctx, namespace, name, uid)  # also one never placed (no finalizer)
        if ctx.cache.mac_leases_of(uid):  # in memory: a request only for a VM that leased its MAC
            await _in_thread(memo, leases.release_mac_leases, ctx, uid)
        return
    if meta.get("deletionTimestamp"):
        return
    vm = dict(body)
    if status.get("nodeName"):
        # Placed: it has its pod on its node (also what creates the pods of VMs that ran before this
        # version, when the controller starts: Kopf lists every VM first). In-memory unless a pod is missing.
        outcome = "ok" if vms.placed_and_settled(ctx, vm) else await _in_thread(memo, vms.ensure_pod_of_placed, ctx, vm)
    elif vms.waiting_for_kube_scheduler(ctx, vm):
        # Its own Pending status write or Kopf's finalizer: in-memory, the pod's binding acts.
        outcome = "waiting-for-kube-scheduler"
    else:
        # A VM without any status (just created) is taken as the event shows it: no GET first.
        outcome = await _in_thread(memo, vms.ensure_scheduled, ctx, namespace, name, hint=None if status else vm)
    log.debug("%s/%s: %s", namespace, name, outcome)


def _holds_finalizers(*, meta: kopf.Meta, **_: Any) -> bool:
    """Whether a VM's deletion waits for on_vm_delete: once placed. The controller puts Kopf's
    finalizer on a VM in the same patch as the node label and the agent finalizer (vms._place),
    instead of Kopf's own PATCH at the VM's first event (one request per VM, and it collided with the
    controller's writes: a 409 and a GET each time). A VM never placed holds no VF and no domain:
    its deletion waits for nothing (its pod goes with it, a claim of a pass that died is released
    by the orphan sweep). A VM with the agent finalizer but not Kopf's (a repair, an earlier
    version) gets Kopf's from Kopf."""
    fins = meta.get("finalizers") or []
    return AGENT_FINALIZER in fins or CONTROLLER_FINALIZER in fins


@kopf.on.delete(*FVM, when=_holds_finalizers)
def on_vm_delete(*, name: str, namespace: str | None, uid: str, memo: kopf.Memo, **kw: Any) -> None:
    ctx = _ctx(memo, kw)
    try:
        vms.finalize(ctx, namespace or "", name, uid)
    except vms.StillDeleting as exc:
        raise kopf.TemporaryError(str(exc), delay=2) from None


# -- the watch caches (controller.cache): what the controller knows without asking the API ------------
# Each index keeps a summary of the fields the controller reads. None of them writes to its objects.
@kopf.index(*FVM)
def fvm_keys(*, body: kopf.Body, **_: Any) -> dict[tuple[str, ...], dict[str, Any]]:
    return cache.vm_keys(body)


@kopf.index(*CLAIM)
def vfclaim_keys(*, body: kopf.Body, **_: Any) -> dict[tuple[str, ...], dict[str, Any]]:
    return cache.claim_keys(body)


@kopf.index(*MACLEASE)
def maclease_keys(*, body: kopf.Body, **_: Any) -> dict[tuple[str, ...], dict[str, Any]]:
    return macleases.lease_keys(body)


@kopf.index(*POOL)
def vfpool_index(*, name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: cache.pool_summary(body)}


@kopf.index(*INVENTORY)
def vfinventory_index(*, name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: cache.inventory_summary(body)}


@kopf.index("", "v1", "nodes")
def node_index(*, name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: cache.node_summary(body)}


@kopf.on.event(*CLAIM)
async def on_claim_event(*, type: str, memo: kopf.Memo, **kw: Any) -> None:
    """A released VF is capacity: wake the VMs that wait for one."""
    if type == "DELETED":
        _ctx(memo, kw).capacity.changed()


@kopf.on.event(*MACLEASE)
async def on_mac_lease_event(*, type: str, memo: kopf.Memo, **kw: Any) -> None:
    """A released MAC: wake the VMs that wait for one (MACConflict)."""
    if type == "DELETED":
        _ctx(memo, kw).capacity.changed()


@kopf.on.event(*INVENTORY)
async def on_inventory_event(*, memo: kopf.Memo, **kw: Any) -> None:
    """A node's VF inventory was written (its agent writes it only when it changed): wake waiting VMs."""
    _ctx(memo, kw).capacity.changed()


@kopf.on.event(*POOL)
async def on_pool_event(*, type: str, name: str, meta: kopf.Meta, memo: kopf.Memo, **kw: Any) -> None:
    """A pool was added or its spec changed (not its status: the controller's own counts): wake
    waiting VMs."""
    ctx = _ctx(memo, kw)
    if ctx.capacity.object_changed(f"vfpool/{name}", None if type == "DELETED" else str(meta.get("generation"))):
        ctx.capacity.changed()


@kopf.timer(*POOL, interval=3.0)
def pool_status(*, name: str, memo: kopf.Memo, **kw: Any) -> None:
    """Per pool: refresh allocated/free counts. Also, at most every 3 s for all pools together, sweep
    the nodes (evacuation, displaced VMs, node health) and the pending VMs (a back-off ended, capacity
    changed: vms.wake_pending) and, every 30 s, orphaned VFClaims, VM pods, migration
    history, VM locks left by migrations that vanished, and VMs whose node was deleted while no
    controller watched.

    The node sweep hangs off the VFPool timers because Kopf puts a finalizer on every object a
    timer runs for: that must never happen to Nodes (the controller may not even patch them) or to
    objects Helm installs. No pool means no VM, so nothing to sweep then."""
    ctx = _ctx(memo, kw)
    isolated(f"status of VFPool {name}", vms.refresh_pool_status, ctx, name)
    sweeps.tick(ctx)
    ctx.tenancy.stop_standby_watch()  # active (timers run on the active replica only): the indexes answer


@kopf.on.validate(*FVM, operations=["CREATE", "UPDATE"], id="failovervm-validate")
async def validate_failovervm(*, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    # Async on purpose: admission must never wait for a handler thread, because the controller's
    # own writes (labels, finalizers) pass through this webhook while handler threads wait on them.
    errors = await admission.validate_failovervm(_ctx(memo, kwargs), body, kwargs.get("operation"), kwargs.get("old"))
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


# -- tenancy (failovervm.tenancy): what admission and MAC generation read, in memory -------------------
# The pools and namespace labels: vfpool_index (above) and namespace_labels (below); the MACs per
# pool: keys of fvm_keys (above).


# -- VM pods ---------------------------------------------------------------------------------------
# The API server sends only pods with a failovervm.io/vm-uid label (the watch's label selector, set
# in configure); the label filter below says the same for readers. Neither handler writes to pods,
# so Kopf puts nothing on them.
@kopf.index("", "v1", "pods", labels={fvm_labels.VM_UID_LABEL: kopf.PRESENT})
def vm_pods(*, body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, Any]]:
    """{vm uid: pod summary}: the VM pods in memory (Kopf fills it before any handler runs)."""
    return {str(labels[fvm_labels.VM_UID_LABEL]): vmpod.summary(body)}


@kopf.on.event("", "v1", "pods", labels={fvm_labels.VM_UID_LABEL: kopf.PRESENT})
async def on_vm_pod_event(*, type: str, body: kopf.Body, labels: kopf.Labels, namespace: str | None,
                          memo: kopf.Memo, **kw: Any) -> None:
    """kube-scheduler bound a VM pod or found it unschedulable, or a pod was deleted: act on its VM
    (a running pod) or its migration (a target pod)."""
    ctx = _ctx(memo, kw)
    if labels.get(fvm_labels.ROLE_LABEL) == fvm_labels.ROLE_TARGET:
        if namespace and labels.get(fvm_labels.MIGRATION_LABEL):
            await _in_thread(memo, migrations.advance, ctx, namespace, str(labels[fvm_labels.MIGRATION_LABEL]))
        return
    pod = dict(body)
    outcome = vms.settled_pod_event(ctx, type, pod) or await _in_thread(memo, vms.on_running_pod_event, ctx, type, pod)
    log.debug("VM pod %s/%s %s: %s", namespace, body.get("metadata", {}).get("name"), type, outcome)


# -- FailoverVMMigration -----------------------------------------------------------------------
def _active(*, status: kopf.Status, **_: Any) -> bool:
    return (status.get("phase") or "Pending") not in ("Succeeded", "Failed", "Aborted") or not any(
        c.get("type") == "CleanedUp" and c.get("status") == "True" for c in status.get("conditions") or [])


@kopf.on.event(*FVMM)
def on_migration_event(*, type: str, name: str, namespace: str | None, meta: kopf.Meta, status: kopf.Status,
                       memo: kopf.Memo, **kw: Any) -> None:
    if type == "DELETED" or meta.get("deletionTimestamp") or namespace is None:
        return
    ctx = _ctx(memo, kw)
    phase = migrations.advance(ctx, namespace, name)
    source = status.get("sourceNode")
    if phase in ("Succeeded", "Failed", "Aborted") and source:
        # A slot on the source node is free: start the next evacuation migration right away.
        evacuation.reconcile_node(ctx, str(source))


@kopf.timer(*FVMM, interval=1.0, when=_active)
def drive_migration(*, name: str, namespace: str | None, memo: kopf.Memo, **kw: Any) -> None:
    migrations.advance(_ctx(memo, kw), namespace or "", name)


@kopf.on.delete(*FVMM)
def on_migration_delete(*, name: str, namespace: str | None, memo: kopf.Memo, **kw: Any) -> None:
    try:
        migrations.on_delete(_ctx(memo, kw), namespace or "", name)
    except migrations.WaitForAgent as exc:
        raise kopf.TemporaryError(str(exc), delay=1) from None


# -- Migration policies: read when a migration starts, from these watch caches --------------------
@kopf.index(*POLICY)
def migration_policies(*, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any) -> dict[str, dict[str, Any]]:
    """{"all": policy summary}: every FailoverMigrationPolicy in memory (never written to)."""
    return {policies.ALL: policies.summary(name, spec, bool(meta.get("deletionTimestamp")))}


@kopf.index("", "v1", "namespaces")
def namespace_labels(*, name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    """{namespace: its labels}, for the policies' namespaceSelectors."""
    return {name: dict(labels)}


# -- Nodes: evacuation, node failure, and the eviction of VM pods ------------------------------------
@kopf.on.event("", "v1", "nodes")
def on_node_event(*, type: str, name: str, body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    ctx = _ctx(memo, kw)
    if type != "DELETED":
        summary = cache.node_summary(body)
        if ctx.capacity.object_changed(f"node/{name}", cache.node_fingerprint(summary)):
            ctx.capacity.changed()  # added, or its readiness, taints, cordon, allocatable changed
        if evacuation.needs_pass(ctx, summary):  # a heartbeat that changes nothing costs no API call
            evacuation.reconcile_node(ctx, name)
    elif name:
        ctx.capacity.object_changed(f"node/{name}", None)
        # A deleted Node is no proof that its machine stopped: its VMs are marked, and restarted
        # elsewhere only once confirmed down (nodehealth, recovery.release_gone).
        recovery.release_all(ctx, name, None)


@kopf.on.validate("", "v1", "pods", subresource="eviction", operations=["CREATE"], id="vm-pod-eviction",
                  ignore_failures=True)
async def vm_pod_eviction(*, name: str | None, namespace: str | None, memo: kopf.Memo, dryrun: bool = False,
                          **kw: Any) -> None:
    """`kubectl drain`, cluster-autoscaler and Karpenter evict the node's VM pods: answer 429 (retry)
    while the VM still runs there, and move it away. Any other pod's eviction is allowed."""
    refusal = await admission.vm_pod_eviction(_ctx(memo, kw), name, namespace, dryrun)
    if refusal:
        raise kopf.AdmissionError(refusal, code=429)
