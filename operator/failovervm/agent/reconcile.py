"""Per-VM reconcile on a node: FailoverVM (desired) -> libvirt domain (actual) -> status.

Synchronous and idempotent; the agent runs one reconcile per VM at a time in a thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from failovervm import conditions, domxml, failpoints, guestfailover, labels, repair
from failovervm.agent.domains import (
    DomainError,
    DomainManager,
    DomainRef,
    DomainState,
    PausedReason,
    real_pci_device_exists,
)
from failovervm.domxml.diff import restart_diff
from failovervm.kube import KubeAPI
from failovervm.metrics import DOMAIN_START_SECONDS, VF_ATTACH, set_failover_counts
from failovervm.storage import BackingChainRefused, Layer, StorageGrant, StoragePolicy, check_chain
from failovervm.vfs import is_simulated
from failovervm.vmspec import domain_spec

log = logging.getLogger(__name__)

RESTART_REQUIRED = "RestartRequired"
VF_BACKOFF_START = 5.0
VF_BACKOFF_MAX = 300.0
# FailoverReady is re-checked 2, 4, 8 and 16 s after a start, reboot or arrival until the guest
# acks STANDBY (QEMU's FAILOVER_NEGOTIATED event usually gets there first), then only on events
# and the agent's periodic resync (30 s).
FAILOVER_CHECK_START = 2.0
FAILOVER_CHECK_MAX = 30.0
NOT_RUNNING_FAILOVER = guestfailover.condition(None, running=False)


@dataclass
class VFAttachState:
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""


@dataclass
class AgentContext:
    node: str
    kube: KubeAPI
    dm: DomainManager
    storage_roots: list[str]
    sysfs_root: Path
    kvm: bool = True
    # The administrator's storage grants beyond <root>/<namespace>/ (failovervm.storage).
    storage_grants: tuple[StorageGrant, ...] = ()
    # Migrate also to qemu+tcp:// libvirt URIs (failovervm.tenancy.check_destination).
    allow_tcp_migration: bool = False
    vf_state: dict[str, VFAttachState] = field(default_factory=dict)
    failures: dict[str, VFAttachState] = field(default_factory=dict)
    serial_log_dir: str | None = None
    failover_checks: dict[str, int] = field(default_factory=dict)  # domain name -> checks since start
    failover_status: dict[str, str] = field(default_factory=dict)  # running domain -> FailoverReady status
    # Set by the agent: around a call that may block for a guest's grace period (dm.stop), so that
    # it does not hold one of the reconcile slots (failovervm.agent.slots).
    slow: Callable[[], AbstractContextManager[None]] = nullcontext
    # Set by the agent: handles VMs with status.migration (see failovervm.agent.migrate).
    migration_hook: Callable[[Mapping[str, Any], DomainRef | None], Outcome | None] | None = None

    @property
    def storage(self) -> StoragePolicy:
        return StoragePolicy(tuple(self.storage_roots), self.storage_grants)

    def forget_failover(self, dname: str) -> None:
        """Drop a domain that stopped or left this node from the FailoverReady gauge."""
        self.prune_failover({n for n in self.failover_status if n != dname})

    def prune_failover(self, keep: set[str]) -> None:
        """Keep only the domains in `keep` (the running ones) in the FailoverReady gauge."""
        for name in [n for n in self.failover_status if n not in keep]:
            del self.failover_status[name]
            self.failover_checks.pop(name, None)
        set_failover_counts(self.node, self.failover_status.values())

    def event(self, obj: Mapping[str, Any], reason: str, note: str, warning: bool = False) -> None:
        """Post an Event about `obj` as this node's agent."""
        self.kube.event(obj, reason, note, type_="Warning" if warning else "Normal", component=f"agent/{self.node}")

    def backoff_left(self, uid: str) -> float:
        st = self.failures.get(uid)
        return max(0.0, st.next_try - time.monotonic()) if st else 0.0

    def failed(self, uid: str, error: str) -> float:
        """Record a failed define/start; returns the delay before the next try (5 s doubling to 5 min)."""
        st = self.failures.setdefault(uid, VFAttachState())
        st.attempts += 1
        delay = float(min(VF_BACKOFF_START * 2 ** (st.attempts - 1), VF_BACKOFF_MAX))
        st.next_try, st.last_error = time.monotonic() + delay, error
        return delay


@dataclass
class Outcome:
    action: str
    requeue_after: float | None = None


class StatusWriter(Protocol):
    def __call__(self, phase: str | None = None, conds: Sequence[guestfailover.Condition] = (),
                 **fields: Any) -> dict[str, Any] | None: ...


def _status_writer(ctx: AgentContext, vm: Mapping[str, Any]) -> StatusWriter:
    meta = vm["metadata"]
    latest: dict[str, Any] = {"obj": vm}  # the last version we read or wrote: saves a GET per write

    def write(phase: str | None = None, conds: Sequence[guestfailover.Condition] = (),
              **fields: Any) -> dict[str, Any] | None:
        """Update the VM's status; returns the object as written (None: not ours any more)."""
        def mutate(st: dict[str, Any]) -> dict[str, Any] | None:
            if st.get("nodeName") != ctx.node:
                return None  # moved away meanwhile: not ours to write
            if phase:
                st["phase"] = phase
            st.update(fields)
            for type_, ok, reason, message in conds:
                st["conditions"] = conditions.set_condition(
                    st.get("conditions"), type_, ok, reason, message, meta.get("generation"))
            return st

        obj = ctx.kube.update_vm_status(meta["namespace"], meta["name"], mutate, uid=meta["uid"],
                                        current=latest["obj"])
        if obj is not None:
            latest["obj"] = obj
        return obj

    return write


def grace_period(vm: Mapping[str, Any]) -> float:
    spec = vm.get("spec") or {}
    return float(spec["terminationGracePeriodSeconds"]) if "terminationGracePeriodSeconds" in spec else 30.0


def reconcile(ctx: AgentContext, namespace: str, name: str) -> Outcome:
    """One VM on this node: find its domain (removing an orphan's or a predecessor's), let _route
    hand the special cases off, else _run_here: the desired domain, (re)define, a requested
    restart, start or stop, then report Running, the VF and FailoverReady."""
    dname = domxml.domain_name(namespace, name)
    vm = ctx.kube.get_vm(namespace, name)
    dom = ctx.dm.lookup(dname)
    if vm is None:
        if dom is not None:
            return _remove_orphan(ctx, dom, None)
        return Outcome("absent")
    if dom is not None:
        owner = domxml.parse_owner(ctx.dm.xml(dom, inactive=True))
        if owner is None:
            log.error("domain %s exists but was not created by failovervm; leaving it alone", dname)
            return Outcome("foreign-domain")
        if owner.uid != vm["metadata"]["uid"]:
            # A previous VM of the same name: it is gone, its domain must go too.
            _remove_orphan(ctx, dom, owner)
            dom = None
    routed = _route(ctx, vm, dom)
    if isinstance(routed, Outcome):
        return routed
    return _run_here(ctx, routed, dom)


def _route(ctx: AgentContext, vm: Mapping[str, Any], dom: DomainRef | None) -> Outcome | Mapping[str, Any]:
    """Everything but "run this VM here as its spec says": a copy on a node that does not run it,
    deletion, the agent finalizer, a migration, an eviction. Returns the VM (re-read when the
    finalizer was added) when none of them takes over."""
    meta = vm["metadata"]
    status = vm.get("status") or {}
    if status.get("nodeName") != ctx.node:
        return _leftover_copy(ctx, vm, dom) if dom is not None else Outcome("not-ours")
    if meta.get("deletionTimestamp"):
        return _delete(ctx, vm, dom)
    if labels.AGENT_FINALIZER not in (meta.get("finalizers") or []):
        refreshed = ctx.kube.set_finalizer(meta["namespace"], meta["name"], labels.AGENT_FINALIZER, True,
                                           current=vm)
        if refreshed is None:
            return Outcome("deleting")
        vm, meta, status = refreshed, refreshed["metadata"], refreshed.get("status") or {}
    if status.get("migration") and ctx.migration_hook is not None:
        handled = ctx.migration_hook(vm, dom)
        if handled is not None:
            return handled
    if (meta.get("annotations") or {}).get(labels.EVICT_ANNOTATION) == ctx.node:
        return _evict(ctx, vm, dom)
    return vm


@dataclass
class _Pass:
    """One reconcile of a VM this node runs: what its steps share."""

    ctx: AgentContext
    vm: Mapping[str, Any]
    write: StatusWriter
    # status.domain after a (re)define: written with the next state change (or at the end).
    domain_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def dname(self) -> str:
        return domxml.domain_name(self.vm["metadata"]["namespace"], self.vm["metadata"]["name"])

    @property
    def uid(self) -> str:
        return str(self.vm["metadata"]["uid"])

    @property
    def want_running(self) -> bool:
        return bool((self.vm.get("spec") or {}).get("running", True))

    @property
    def ready(self) -> guestfailover.Condition:
        return "Ready", True, "Running", f"domain {self.dname} is running on {self.ctx.node}"

    def take_domain_fields(self) -> dict[str, Any]:
        fields, self.domain_fields = self.domain_fields, {}
        return fields

    def event(self, reason: str, note: str, warning: bool = False) -> None:
        self.ctx.event(self.vm, reason, note, warning)


def _run_here(ctx: AgentContext, vm: Mapping[str, Any], dom: DomainRef | None) -> Outcome:
    """Bring the domain to what the VM's spec says, and report it in the VM's status."""
    run = _Pass(ctx, vm, _status_writer(ctx, vm))
    desired = _desired_domain(run)
    if isinstance(desired, Outcome):
        return desired
    spec, xml = desired
    wait = ctx.backoff_left(run.uid)
    if wait > 0:
        return Outcome("backoff", requeue_after=wait)
    defined = _define(run, dom, xml, spec)
    if isinstance(defined, Outcome):
        return defined
    dom = defined
    active = _restart_if_requested(run, dom, ctx.dm.is_active(dom))
    if isinstance(active, Outcome):
        return active
    stopped = _start_or_stop(run, dom, active)
    if stopped is not None:
        return stopped
    return _report_running(run, dom, spec)


def _desired_domain(run: _Pass) -> Outcome | tuple[domxml.DomainSpec, str]:
    """The domain the VM asks for on this node (its spec and persistent XML), or why there is none."""
    ctx, vm = run.ctx, run.vm
    status = vm.get("status") or {}
    pool_name = ((vm.get("spec") or {}).get("network") or {}).get("pool", "")
    pool = ctx.kube.get_pool(pool_name)
    if pool is None:
        run.write("Failed", [("Ready", False, "PoolNotFound", f"VFPool {pool_name!r} does not exist")])
        return Outcome("no-pool", requeue_after=30)
    vf = status.get("vf") or {}
    serial_log = f"{ctx.serial_log_dir}/{run.dname}.log" if ctx.serial_log_dir else None
    try:
        spec = domain_spec(vm, pool, storage=ctx.storage,
                           vf=vf.get("pciAddress") if vf.get("node") == ctx.node else None,
                           vf_node=ctx.node, kvm_available=ctx.kvm, serial_log=serial_log)
        return spec, domxml.to_xml(domxml.build_domain(spec, include_vf=False))
    except ValueError as exc:
        run.write("Failed", [("Ready", False, "InvalidSpec", str(exc))])
        run.event("InvalidSpec", str(exc), warning=True)
        return Outcome("invalid-spec")


def _define(run: _Pass, dom: DomainRef | None, xml: str, spec: domxml.DomainSpec) -> Outcome | DomainRef:
    """(Re)define the domain when there is none or the VM's generation changed (a running domain
    gets the change at its next boot), once its disk images match what the spec declares."""
    ctx, meta = run.ctx, run.vm["metadata"]
    recorded = ((run.vm.get("status") or {}).get("domain") or {}).get("generation")
    if dom is not None and recorded == meta.get("generation"):
        return dom
    try:
        check_images(ctx.dm, spec)
    except (BackingChainRefused, DomainError) as exc:
        run.write("Failed", [("Ready", False, "ImageRefused", str(exc))])
        run.event("ImageRefused", str(exc), warning=True)
        return Outcome("image-refused", requeue_after=ctx.failed(run.uid, str(exc)))
    try:
        dom = ctx.dm.define(xml)
    except DomainError as exc:
        run.write("Failed", [("Ready", False, "DefineFailed", str(exc))])
        run.event("DefineFailed", str(exc), warning=True)
        return Outcome("define-failed", requeue_after=ctx.failed(run.uid, str(exc)))
    run.domain_fields["domain"] = {"name": run.dname, "uuid": dom.uuid, "generation": meta.get("generation")}
    if recorded is None:
        run.event("Defined", f"defined domain {run.dname} on {ctx.node}")
    return dom


def check_images(dm: DomainManager, spec: domxml.DomainSpec) -> None:
    """Every disk's image and declared backing files, read on this node before the domain is
    defined, must be what the spec declares (failovervm.storage.check_chain): its format, and no
    backing file the spec does not name. Raises BackingChainRefused or DomainError."""
    for disk in spec.disks:
        declared = [Layer(disk.path, disk.format)] + [Layer(b.path, b.format) for b in disk.backing]
        check_chain(f"spec.disks[{disk.name}]", declared, lambda layer: dm.image_info(layer.path, layer.format))


def _restart_if_requested(run: _Pass, dom: DomainRef, active: bool) -> Outcome | bool:
    """The restart annotation: a running domain is stopped once per request (it starts again with
    the current spec). Returns whether the domain is active now."""
    ctx, vm = run.ctx, run.vm
    requested = (vm["metadata"].get("annotations") or {}).get(labels.RESTART_ANNOTATION)
    if not requested or requested == (vm.get("status") or {}).get("restartedFor"):
        return active
    if not (active and run.want_running):
        run.write(None, restartedFor=requested)  # a stopped VM starts with the current spec anyway
        return active
    # Record the request first and check that it stuck: at most one restart per request,
    # even with a CRD too old to store status.restartedFor (that would restart forever).
    written = run.write("Stopping", [("Ready", False, "Restarting", f"restart requested ({requested})")],
                        restartedFor=requested, **run.take_domain_fields())
    if written is None or (written.get("status") or {}).get("restartedFor") != requested:
        msg = ("could not record the restart request in status.restartedFor (is the FailoverVM CRD "
               "older than this agent? apply crds/ of this version); not restarting")
        run.write("Running", [run.ready])
        run.event("RestartNotRecorded", msg, warning=True)
        return Outcome("restart-not-recorded", requeue_after=60)
    with ctx.slow():
        how = ctx.dm.stop(dom, timeout=grace_period(vm))
    ctx.forget_failover(run.dname)
    run.event("Restarting", f"domain {run.dname} stopped ({how}) for the requested restart; starting "
              "it with the current spec")
    return False


def _start_or_stop(run: _Pass, dom: DomainRef, active: bool) -> Outcome | None:
    """spec.running: start a stopped domain, stop a running one. None: the domain runs."""
    ctx = run.ctx
    if run.want_running and not active:
        run.write("Starting", [("Ready", False, "Starting", "starting the domain")], **run.take_domain_fields())
        t0 = time.monotonic()
        try:
            ctx.dm.start(dom)
        except DomainError as exc:
            reason, message = repair.start_failure(str(exc))
            run.write("Failed", [("Ready", False, reason, message)])
            run.event(reason, message, warning=True)
            return Outcome("start-failed", requeue_after=ctx.failed(run.uid, str(exc)))
        DOMAIN_START_SECONDS.labels(ctx.node).observe(time.monotonic() - t0)
        ctx.failures.pop(run.uid, None)
        ctx.vf_state.pop(run.uid, None)  # a fresh start: attach the VF again
        ctx.failover_checks.pop(run.dname, None)  # and watch the new boot negotiate failover
        run.event("Started", f"domain {run.dname} started on {ctx.node}")
        active = True
    elif not run.want_running and active:
        run.write("Stopping", [("Ready", False, "Stopping", "spec.running is false")], **run.take_domain_fields())
        with ctx.slow():
            how = ctx.dm.stop(dom, timeout=grace_period(run.vm))
        ctx.forget_failover(run.dname)
        run.write("Stopped", [("Ready", False, "Stopped", f"domain stopped ({how})"),
                              ("VFAttached", False, "Stopped", "the domain is not running"), NOT_RUNNING_FAILOVER])
        run.event("Stopped", f"domain {run.dname} stopped ({how})")
        return Outcome("stopped")
    fields = run.take_domain_fields()
    if fields:
        run.write(None, **fields)
    if not active:
        ctx.forget_failover(run.dname)
        run.write("Stopped", [("Ready", False, "Stopped", "the domain is not running"),
                              ("VFAttached", False, "Stopped", "the domain is not running"), NOT_RUNNING_FAILOVER])
        return Outcome("stopped")
    return None


def _report_running(run: _Pass, dom: DomainRef, spec: domxml.DomainSpec) -> Outcome:
    """The domain runs: Running, then the VF (hot-plugged if missing) and FailoverReady."""
    ctx, vm = run.ctx, run.vm
    state, reason = ctx.dm.state(dom)
    if state == DomainState.PAUSED and reason != PausedReason.MIGRATION:
        msg = f"domain is paused (libvirt reason {reason}); see the QEMU log on {ctx.node}"
        run.write("Failed", [("Ready", False, "Paused", msg)])
        run.event("DomainPaused", msg, warning=True)
        return Outcome("paused", requeue_after=30)

    # Running as soon as the domain runs; the VF is a separate step with its own condition.
    run.write("Running", [run.ready, *_restart_required(ctx, vm, dom)], mac=spec.mac)
    requeue = None
    vf_cond: tuple[str, bool, str, str]
    if spec.vf is None:
        vf_cond = ("VFAttached", False, "NoVF", "no VF is assigned to this VM on this node")
    else:
        vf_cond, requeue = _ensure_vf(ctx, vm, dom, spec)
    fo_cond, fo_requeue = _failover_ready(ctx, vm, dom)
    run.write("Running", [run.ready, vf_cond, fo_cond], mac=spec.mac)
    if fo_requeue is not None:
        requeue = fo_requeue if requeue is None else min(requeue, fo_requeue)
    return Outcome("running", requeue_after=requeue)


def probe_failover(dm: DomainManager, dom: DomainRef,
                   ) -> tuple[guestfailover.FailoverProbe | None, guestfailover.Condition]:
    """Ask QEMU what the guest acked on the standby NIC: the probe (None when QEMU could not be
    asked) and the FailoverReady condition it means."""
    try:
        probe = dm.failover_probe(dom)
    except (DomainError, ValueError) as exc:
        return None, guestfailover.condition(None, error=str(exc))
    return probe, guestfailover.condition(probe)


def _failover_ready(ctx: AgentContext, vm: Mapping[str, Any],
                    dom: DomainRef) -> tuple[guestfailover.Condition, float | None]:
    """Ask QEMU whether the guest acked STANDBY; the FailoverReady condition and when to look again."""
    dname = dom.name
    probe, cond = probe_failover(ctx.dm, dom)
    status_now = conditions.status_text(cond[1])
    if ctx.failover_status.get(dname) != status_now:
        ctx.failover_status[dname] = status_now
        set_failover_counts(ctx.node, ctx.failover_status.values())
    prev = conditions.get((vm.get("status") or {}).get("conditions"), guestfailover.CONDITION) or {}
    if (prev.get("status"), prev.get("reason")) != (status_now, cond[2]):
        if probe is not None and probe.negotiated:
            ctx.event(vm, "FailoverNegotiated", "the guest acknowledged VIRTIO_NET_F_STANDBY; FailoverReady")
        elif probe is not None and (probe.driver_ok or not probe.offered):
            ctx.event(vm, "FailoverNotNegotiated", cond[3], warning=True)
    if probe is not None and probe.negotiated:
        ctx.failover_checks.pop(dname, None)
        return cond, None
    n = ctx.failover_checks.get(dname, 0)
    ctx.failover_checks[dname] = n + 1
    delay = FAILOVER_CHECK_START * 2**n
    # After about a minute the periodic resync (and QEMU's event) take over: no extra requeues.
    return cond, (delay if delay <= FAILOVER_CHECK_MAX else None)


def _restart_required(ctx: AgentContext, vm: Mapping[str, Any],
                      dom: DomainRef) -> list[tuple[str, bool, str, str]]:
    """The RestartRequired condition when the running domain differs from its next boot (a spec
    change written to the persistent definition); its clearing once a restart applied it."""
    try:
        changes = restart_diff(ctx.dm.xml(dom), ctx.dm.xml(dom, inactive=True))
    except (DomainError, ValueError) as exc:
        log.debug("could not compare the running and the persistent XML of %s: %s", dom.name, exc)
        return []
    prev = conditions.get((vm.get("status") or {}).get("conditions"), RESTART_REQUIRED) or {}
    if not changes:
        if prev.get("status") == "True":
            return [(RESTART_REQUIRED, False, "Applied", "the running domain matches the spec")]
        return []
    message = (f"the spec changed while the domain runs; at the next restart (`failovervm restart "
               f"{vm['metadata']['name']}`): {'; '.join(changes)}")
    if prev.get("status") != "True" or prev.get("message") != message:
        ctx.event(vm, RESTART_REQUIRED, message)
    return [(RESTART_REQUIRED, True, "SpecChanged", message)]


def _ensure_vf(ctx: AgentContext, vm: Mapping[str, Any], dom: DomainRef,
               spec: domxml.DomainSpec) -> tuple[tuple[str, bool, str, str], float | None]:
    uid = vm["metadata"]["uid"]
    pci = str(spec.vf)
    if ctx.dm.has_vf(dom):
        ctx.vf_state.pop(uid, None)
        return ("VFAttached", True, "Attached", f"VF {pci} is attached as the failover primary"), None
    st = ctx.vf_state.setdefault(uid, VFAttachState())
    now = time.monotonic()
    if now < st.next_try:
        return ("VFAttached", False, "AttachFailed", st.last_error), st.next_try - now
    simulated = is_simulated(ctx.sysfs_root)
    if simulated and real_pci_device_exists(pci):
        msg = (f"VF {pci} is simulated (sandbox sysfs) but a real PCI device has that address on this host; "
               "refusing to hot-plug it")
        st.last_error, st.next_try = msg, now + VF_BACKOFF_MAX
        return ("VFAttached", False, "SimulatedAddressExists", msg), VF_BACKOFF_MAX
    st.attempts += 1
    try:
        ctx.dm.attach_vf(dom, spec)
    except (DomainError, ValueError) as exc:
        delay = min(VF_BACKOFF_START * 2 ** (st.attempts - 1), VF_BACKOFF_MAX)
        prefix = "simulated VF (sandbox, no SR-IOV hardware): " if simulated else ""
        st.last_error = f"{prefix}attaching VF {pci} failed (attempt {st.attempts}): {exc}"
        st.next_try = now + delay
        VF_ATTACH.labels(ctx.node, "failed").inc()
        if st.attempts == 1:
            ctx.event(vm, "VFAttachFailed", st.last_error, warning=True)
        return ("VFAttached", False, "AttachFailed", st.last_error), delay
    VF_ATTACH.labels(ctx.node, "ok").inc()
    ctx.vf_state.pop(uid, None)
    ctx.event(vm, "VFAttached", f"VF {pci} hot-plugged as failover primary")
    return ("VFAttached", True, "Attached", f"VF {pci} is attached as the failover primary"), None


def _evict(ctx: AgentContext, vm: Mapping[str, Any], dom: DomainRef | None) -> Outcome:
    """evictionStrategy Shutdown on a draining node: shut down, undefine, and hand the VM back to
    the controller, which starts it on another node."""
    meta = vm["metadata"]
    how = "not defined"
    if dom is not None:
        with ctx.slow():
            how = ctx.dm.stop(dom, timeout=grace_period(vm))
        ctx.dm.undefine(dom)
    ctx.forget_failover(domxml.domain_name(meta["namespace"], meta["name"]))

    def release(st: dict[str, Any]) -> dict[str, Any] | None:
        if st.get("nodeName") != ctx.node:
            return None
        for key in ("nodeName", "vf", "domain"):
            st.pop(key, None)
        st["phase"] = "Pending"
        st["conditions"] = conditions.set_condition(
            st.get("conditions"), "Ready", False, "Evicted",
            f"shut down ({how}) on draining node {ctx.node}; to be started on another node", meta.get("generation"))
        st["conditions"] = conditions.set_condition(st["conditions"], "Scheduled", False, "Evicted",
                                                    f"evicted from {ctx.node}")
        return st

    # Metadata first, status last: once nodeName is gone the controller re-places the VM (and sets a
    # new node label), which this patch must not overwrite. The agent finalizer stays: the
    # controller keeps it for the next node (and removes it itself if the VM is deleted unplaced).
    ctx.kube.patch_vm(meta["namespace"], meta["name"], {"metadata": {
        "labels": {labels.VM_NODE: None}, "annotations": {labels.EVICT_ANNOTATION: None}}})
    failpoints.hit("agent.evict.after-unlabel")
    ctx.kube.update_vm_status(meta["namespace"], meta["name"], release, uid=meta["uid"])
    ctx.event(vm, "Evicted", f"shut down ({how}) and released from draining node {ctx.node}")
    return Outcome("evicted")


def _delete(ctx: AgentContext, vm: Mapping[str, Any], dom: DomainRef | None) -> Outcome:
    meta = vm["metadata"]
    if dom is not None:
        with ctx.slow():
            how = ctx.dm.stop(dom, timeout=grace_period(vm))
        ctx.dm.undefine(dom)
        ctx.event(vm, "Deleted", f"domain {dom.name} removed from {ctx.node} ({how})")
    ctx.vf_state.pop(meta["uid"], None)
    ctx.forget_failover(domxml.domain_name(meta["namespace"], meta["name"]))
    failpoints.hit("agent.delete.before-finalizer")
    ctx.kube.set_finalizer(meta["namespace"], meta["name"], labels.AGENT_FINALIZER, False)
    return Outcome("deleted")


def _incoming_here(ctx: AgentContext, vm: Mapping[str, Any]) -> bool:
    """A migration of `vm` to this node is on its way (or just finished, before the source agent
    moved the status): its domain here is legitimate."""
    return ((vm.get("status") or {}).get("migration") or {}).get("targetNode") == ctx.node


def _arrived_from_fenced_source(ctx: AgentContext, vm: Mapping[str, Any], dom: DomainRef) -> Outcome | None:
    """The controller asks (condition FencedDuringMigration) because the VM's source node was
    fenced while its migration to this node ran. A domain running here (not paused: the incoming
    migration completed, and QEMU resumes the target only after the source stopped) is the VM: move
    its status, VF and label here; the controller then finishes the orphaned migration. Anything
    else (paused, absent) says nothing, and the VM stays locked."""
    st = vm.get("status") or {}
    mig = st.get("migration") or {}
    if not conditions.is_true(st.get("conditions"), repair.FENCED_DURING_MIGRATION):
        return None
    state, _reason = ctx.dm.state(dom)
    if state != DomainState.RUNNING:
        return None
    meta, source = vm["metadata"], st.get("nodeName")
    msg = (f"migration {mig.get('name')} had completed: the domain runs on {ctx.node} (found by its agent after "
           f"{source} was fenced)")

    def move(s: dict[str, Any]) -> dict[str, Any] | None:
        cur = s.get("migration") or {}
        if cur.get("name") != mig.get("name") or s.get("nodeName") != source or cur.get("targetNode") != ctx.node:
            return None
        s["nodeName"] = ctx.node
        s["vf"] = {"node": ctx.node, "pf": (s.get("vf") or {}).get("pf", ""),
                   "pciAddress": cur.get("targetPciAddress"), "claimName": cur.get("targetClaim")}
        s.pop("migration", None)
        s["phase"] = "Running"
        s["conditions"] = conditions.set_condition(s.get("conditions"), repair.FENCED_DURING_MIGRATION, False,
                                                   "RunningOnTarget", msg, meta.get("generation"))
        return s

    written = ctx.kube.update_vm_status(meta["namespace"], meta["name"], move, uid=meta["uid"])
    if written is None or (written.get("status") or {}).get("nodeName") != ctx.node:
        return Outcome("not-ours")
    ctx.kube.patch_vm(meta["namespace"], meta["name"], {"metadata": {"labels": {labels.VM_NODE: ctx.node}}})
    ctx.event(vm, "MigrationRecoveredByTarget", msg, warning=True)
    return Outcome("arrived-from-fenced-source", requeue_after=1.0)


def _leftover_copy(ctx: AgentContext, vm: Mapping[str, Any], dom: DomainRef) -> Outcome:
    """A domain of `vm` on a node that does not run it, with no migration bringing it here: the
    remains of a migration that died with a libvirtd (QEMU survives the daemon, which re-attaches to
    the paused incoming guest on restart). It would make every later migration here fail with
    "already active". A paused or stopped copy is removed; a running one is reported, never killed,
    because two running copies need a human to decide which one is real.

    Paused includes a copy still starting up (libvirt runs QEMU paused until the start completes):
    no guest code has run in it, and removing it keeps a second running copy from appearing. It is
    also how the remains of an incoming migration look after its libvirtd restarted. Removed at
    once, such a copy goes; when the agent waited for it to "settle", libvirt's state change lock
    was soon held on it and nobody could remove it any more (seen in CI)."""
    meta = vm["metadata"]
    owner_node = (vm.get("status") or {}).get("nodeName")
    if _incoming_here(ctx, vm):
        return _arrived_from_fenced_source(ctx, vm, dom) or Outcome("not-ours")
    # Read the VM again first: a migration to this node may have been scheduled meanwhile. The
    # domain's state is read after it, as close to the removal as possible.
    fresh = ctx.kube.get_vm(meta["namespace"], meta["name"])
    if (fresh is None or fresh["metadata"]["uid"] != meta["uid"]
            or (fresh.get("status") or {}).get("nodeName") == ctx.node or _incoming_here(ctx, fresh)):
        return Outcome("not-ours")
    state, _reason = ctx.dm.state(dom)
    if state == DomainState.RUNNING:
        msg = (f"a running copy of domain {dom.name} is on {ctx.node}, but the VM runs on {owner_node or 'no node'}; "
               "left alone: check both nodes")
        log.error("%s", msg)
        ctx.event(vm, "DuplicateDomain", msg, warning=True)
        return Outcome("duplicate-domain", requeue_after=60)
    ctx.dm.destroy(dom)
    ctx.dm.undefine(dom)
    ctx.forget_failover(dom.name)
    msg = (f"removed a leftover {'paused' if state == DomainState.PAUSED else 'stopped'} copy of domain "
           f"{dom.name} from {ctx.node} (the VM runs on {owner_node or 'no node'}; no migration brings it here)")
    log.warning("%s", msg)
    ctx.event(vm, "StaleDomainRemoved", msg, warning=True)
    return Outcome("stale-removed")


def _remove_orphan(ctx: AgentContext, dom: DomainRef, owner: domxml.OwnerRef | None) -> Outcome:
    owner = owner or domxml.parse_owner(ctx.dm.xml(dom, inactive=True))
    if owner is None:
        return Outcome("foreign-domain")
    log.warning("removing domain %s: its FailoverVM %s/%s (uid %s) is gone", dom.name, owner.namespace,
                owner.name, owner.uid)
    ctx.dm.destroy(dom)
    ctx.dm.undefine(dom)
    ctx.forget_failover(dom.name)
    return Outcome("orphan-removed")
