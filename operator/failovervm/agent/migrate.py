"""Source-node side of a live migration: libvirt peer-to-peer migration of the VM's domain.

The controller has already reserved a VF on the target (VM.status.migration.state == TargetReady).
The agent of the source node then:
1. marks the migration Running (FailoverVMMigration and VM status, phase Migrating);
2. starts a live peer-to-peer migration in a thread (DomainManager.migrate: libvirt's migrateToURI3
   with LIVE | PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE), passing a destination XML whose VF
   teaming member (if the VF is plugged) points at the target's VF, and the persistent definition
   for the target; QEMU unplugs the VF on the source before the memory copy and the guest keeps
   networking through the virtio standby;
3. on success moves VM status, node label and VF to the target and records libvirt's
   completed-job statistics; on failure leaves the VM running on the source and reports why.

The migration runs with the policy the controller recorded on the FailoverVMMigration
(status.policy, see failovervm.migrationpolicy): its flags and parameters (bandwidth, auto-converge,
post-copy, parallel connections, maximum downtime) go into the request, and the progress thread
feeds libvirt's job statistics to a migrationpolicy.Monitor, which ends a migration that runs too
long or stops making progress: abortJob (the VM keeps running here, its VF plugged back; the
migration fails with CompletionTimeout or NoProgress) or, where the policy allows it, a switch to
post-copy (asked again while libvirt refuses it, aborted as PostCopyFailed after a minute). The
stream goes to the target's dedicated migration address when its Node has one (annotation
failovervm.io/migration-address), else to libvirt's choice on the management network.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from failovervm import conditions, domxml, failpoints, guestfailover, labels, metrics, nodehealth, tenancy
from failovervm import migration as mg
from failovervm import migrationpolicy as mp
from failovervm.agent.domains import (
    DomainError,
    DomainManager,
    DomainRef,
    DomainState,
    JobProgress,
    MigrationRequest,
    OperationAborted,
)
from failovervm.agent.reconcile import AgentContext, Outcome, probe_failover
from failovervm.quantity import parse_quantity
from failovervm.vmspec import domain_spec

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 2.0
# Recording a completed transfer in the API is retried this many times (1, 2, 4, 8 s apart) in the
# migration thread; after that the VM's reconcile (_recover) records it later.
RECORD_ATTEMPTS = 5


ON_TARGET_RUNNING, ON_TARGET_ABSENT, ON_TARGET_UNKNOWN = "running", "absent", "unknown"


class OutcomeUnknown(Exception):
    """The domain left this node and the target cannot say whether it arrived there. The VM stays
    locked by its migration: marking it failed would let it be started here a second time."""


class LibvirtLost(OutcomeUnknown, DomainError):
    """This node's libvirtd cannot be asked where the domain is (it died or restarts). Still a
    DomainError for the callers that handle a lost connection (the reconcile retries)."""


class RecordLater(Exception):
    """The transfer completed, but the API would not take the result yet."""


class _NotStarted(Exception):
    """A check before the transfer failed (str: why): the migration fails with `reason`, and
    nothing was transferred."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_TAKEN, _RELEASED, _ABORTED_EARLY = "taken", "released", "aborted-early"


def _libvirt_uri(node: Mapping[str, Any] | None) -> str | None:
    """The libvirt URI a node's agent announced on its Node (None: no node, or none announced)."""
    return ((node or {}).get("metadata", {}).get("annotations") or {}).get(labels.LIBVIRT_URI)


def stream_endpoint(node: Mapping[str, Any] | None, libvirt_uri: str) -> tuple[str | None, str]:
    """(the migration stream's URI, where it goes as recorded on the migration): tcp://<address>
    of the node's dedicated migration address (annotation failovervm.io/migration-address), or
    None and the libvirt URI's host (libvirt's own choice on the management network)."""
    addr = str(((node or {}).get("metadata", {}).get("annotations") or {}).get(labels.MIGRATION_ADDRESS) or "").strip()
    if addr:
        uri = f"tcp://[{addr}]" if ":" in addr else f"tcp://{addr}"
        return uri, uri
    host = libvirt_uri.split("://", 1)[-1].split("/", 1)[0]
    return None, f"{host} (libvirt host, management network)"


@contextmanager
def _remote(dm: DomainManager, uri: str) -> Iterator[DomainManager | None]:
    """The DomainManager of the libvirt at `uri` (None: it cannot be reached), closed afterwards."""
    try:
        there = dm.open_remote(uri)
    except DomainError:
        yield None
        return
    try:
        yield there
    finally:
        there.close()


def run_stats(run: _Run) -> dict[str, int]:
    """What a transfer adds to status.stats: how long the guest ran on its virtio standby (from the
    start of the transfer, when QEMU unplugs the VF, to now: the domain runs on the destination, or
    on the source again), the highest auto-converge throttle, whether it went post-copy, and the
    last pre-copy pass seen (libvirt's completed-job figure replaces it for a completed one; for an
    aborted one it says how far it got)."""
    out: dict[str, int] = {"standbyMs": int((time.monotonic() - run.started) * 1000)}
    if run.iteration:
        out["memoryIteration"] = run.iteration
    if run.throttle:
        out["autoConvergeThrottlePercent"] = run.throttle
    if run.post_copy:
        out["postCopy"] = True
    return out


def destination_xml(live_xml: str, target_pci: str | None) -> str:
    """The source's migratable XML with the VF teaming member (if plugged) pointed at the target VF."""
    el = domxml.parse_xml(live_xml)
    if target_pci:
        addr = domxml.PCIAddress.parse(target_pci)
        for iface in el.iterfind("devices/interface[@type='hostdev']"):
            src = iface.find("source/address")
            if src is not None:
                for k, v in addr.xml_attrs().items():
                    src.set(k, v)
    return domxml.to_xml(el)


def migration_policy(vm: Mapping[str, Any], mig_obj: Mapping[str, Any]) -> mp.EffectivePolicy:
    """The policy the controller recorded on the migration; the built-in defaults (bounded by the
    VM's memory) for one accepted before policies existed."""
    recorded = mp.EffectivePolicy.from_status((mig_obj.get("status") or {}).get("policy"))
    if recorded is not None:
        return recorded
    try:
        memory = parse_quantity((vm.get("spec") or {}).get("memory") or 0)
    except ValueError:
        memory = 0
    return mp.effective_policy(None, memory, mig_obj.get("spec") or {})


@dataclass
class _Run:
    """What the progress thread learns about one running transfer."""

    monitor: mp.Monitor
    started: float  # time.monotonic() when the transfer started (the VF is unplugged)
    limit: mp.Decision | None = None  # the limit that aborted it
    post_copy: str = ""  # why it switched to post-copy
    throttle: int = 0  # the highest auto-converge throttle seen (%)
    iteration: int = 0  # the highest pre-copy pass seen
    downtime_set: bool = False


@dataclass
class Migrator:
    """Tracks the migrations this agent runs (one thread each)."""

    ctx: AgentContext
    transport: str = field(default_factory=lambda: os.environ.get("FAILOVERVM_MIGRATION_TRANSPORT", "tcp"))
    running: dict[str, threading.Thread] = field(default_factory=dict)
    aborting: set[str] = field(default_factory=set)  # abortJob succeeded
    abort_requested: set[str] = field(default_factory=set)  # the controller asked; retried until done
    lock: threading.Lock = field(default_factory=threading.Lock)
    poll_interval: float = 0.5  # how often the progress thread samples the job (tests: less)
    # Limits that ended a migration recovered after an agent restart (VM uid -> the decision).
    recovered_limits: dict[str, mp.Decision] = field(default_factory=dict)
    # Migrations whose transfer ended while this node's libvirtd could not be asked where the
    # domain is (it died or restarted): VM uid -> what ended it. _recover records the outcome once
    # libvirtd answers again, with this as the reason instead of an agent restart.
    libvirt_lost: dict[str, str] = field(default_factory=dict)

    def handle(self, vm: Mapping[str, Any], dom: DomainRef | None) -> Outcome | None:
        """Called by reconcile for a VM with status.migration; None means: reconcile as usual."""
        st = vm.get("status") or {}
        mig = st.get("migration") or {}
        uid = vm["metadata"]["uid"]
        state = mig.get("state")
        with self.lock:
            in_process = uid in self.running and self.running[uid].is_alive()
        if state == mg.TARGET_READY and not in_process:
            if dom is None or not self.ctx.dm.is_active(dom):
                self._finish_failed(vm, mig, "SourceNotRunning", "the domain is not running on the source node",
                                    check_target=False)  # nothing was transferred
                return Outcome("migration-failed")
            t = threading.Thread(
                target=self._run, args=(dict(vm),), name=f"migrate-{vm['metadata']['name']}", daemon=True
            )
            with self.lock:
                self.running[uid] = t
            t.start()
            return Outcome("migration-started")
        if state in (mg.RUNNING, mg.ABORTING) and in_process:
            if state == mg.ABORTING and uid not in self.aborting and dom is not None:
                # The migration thread's watcher retries every 0.5 s until the job exists.
                self.abort_requested.add(uid)
                self._try_abort(uid, dom)
            return Outcome("migrating", requeue_after=2.0)
        if state in (mg.RUNNING, mg.ABORTING) and not in_process:
            return self._recover(vm, mig, dom)
        if state in (mg.TARGET_READY, mg.RUNNING):
            return Outcome("migrating")
        return None  # Scheduling: the VM keeps running as usual

    def _try_abort(self, uid: str, dom: DomainRef) -> None:
        if uid in self.aborting:
            return
        try:
            self.ctx.dm.abort_job(dom)
            self.aborting.add(uid)
            log.info("aborted the migration job of %s", dom.name)
        except DomainError as exc:
            log.info("abortJob not possible yet: %s", exc)

    # -- the migration thread ---------------------------------------------------------------
    def _run(self, vm: dict[str, Any]) -> None:
        uid = vm["metadata"]["uid"]
        try:
            self._migrate(vm)
        except (OutcomeUnknown, RecordLater) as exc:
            self._outcome_pending(vm, exc)
        except Exception as exc:
            log.exception("migration of %s failed unexpectedly", vm["metadata"]["name"])
            try:
                mig = (vm.get("status") or {}).get("migration") or {}
                self._finish_failed(vm, mig, "AgentError", str(exc))
            except OutcomeUnknown as unknown:
                self._outcome_pending(vm, unknown)
            except Exception:
                log.exception("could not record the failure")
        finally:
            with self.lock:
                self.running.pop(uid, None)
                self.aborting.discard(uid)
                self.abort_requested.discard(uid)

    def _outcome_pending(self, vm: Mapping[str, Any], exc: Exception) -> None:
        """Leave the VM locked (migration state Running): its next reconcile finds out where the
        domain is and records that (see _recover)."""
        log.warning("migration of %s/%s: %s; the VM stays locked until its outcome is recorded",
                    vm["metadata"]["namespace"], vm["metadata"]["name"], exc)
        try:
            self.ctx.event(vm, "MigrationOutcomeUnknown", f"{exc}; retrying", warning=True)
        except Exception:
            log.debug("could not post the event", exc_info=True)

    def _migrate(self, vm: dict[str, Any]) -> None:
        """The migration thread: take the migration, check it may start, transfer, record."""
        meta = vm["metadata"]
        ns, name = meta["namespace"], meta["name"]
        mig = dict((vm.get("status") or {}).get("migration") or {})
        mig_name, target = mig["name"], mig["targetNode"]
        started = time.monotonic()
        taken = self._take(vm, mig_name)
        if taken == _RELEASED:
            # The controller released this migration's target (or the VM is gone) in between: the
            # VF reserved on the target may already belong to another VM. Nothing was transferred.
            log.info("migration %s of %s/%s is no longer ours to run; not starting it", mig_name, ns, name)
            return
        if taken == _ABORTED_EARLY:
            self._finish_failed(vm, mig, "Aborted", "aborted before the transfer started", phase=mg.ABORTED,
                                check_target=False)
            return
        failpoints.hit("agent.migrate.after-take")
        self._mark_running(ns, mig_name, target)
        try:
            uri, dom, mig_obj = self._preflight(vm, mig)
        except _NotStarted as refused:
            self._finish_failed(vm, mig, refused.reason, str(refused), check_target=False)
            return
        request = self._request(vm, mig, mig_obj, dom)
        policy = migration_policy(vm, mig_obj)
        run = self._transfer(vm, mig, dom, uri, request, policy)
        if run is None:
            return
        wall = time.monotonic() - started
        stats = {**run_stats(run), **self._completed_stats(uri, domxml.domain_name(ns, name))}
        self._record_success(vm, mig, stats, wall)

    def _take(self, vm: Mapping[str, Any], mig_name: str) -> str:
        """The commit point: the VM's migration state TargetReady -> Running, written with the VM's
        resourceVersion. The controller releases an untaken target (deleted migration, handover
        timeout) only while the state still says TargetReady, so exactly one wins. Returns _TAKEN,
        _RELEASED or _ABORTED_EARLY (the migration was deleted before the agent got going)."""
        meta = vm["metadata"]
        outcome = {"v": _RELEASED}

        def vm_running(st: dict[str, Any]) -> dict[str, Any] | None:
            outcome["v"] = _RELEASED
            cur = st.get("migration") or {}
            if cur.get("name") != mig_name or st.get("nodeName") != self.ctx.node:
                return None
            if cur.get("state") == mg.ABORTING:  # deleted before we got going
                outcome["v"] = _ABORTED_EARLY
                return None
            if cur.get("state") not in (mg.TARGET_READY, mg.RUNNING):
                return None
            st["migration"] = {**cur, "state": mg.RUNNING}
            st["phase"] = "Migrating"
            outcome["v"] = _TAKEN
            return st

        self.ctx.kube.update_vm_status(meta["namespace"], meta["name"], vm_running, uid=meta["uid"])
        return outcome["v"]

    def _mark_running(self, ns: str, mig_name: str, target: str) -> None:
        def to_running(st: dict[str, Any]) -> dict[str, Any] | None:
            if st.get("phase") not in (mg.SCHEDULING, mg.TARGET_READY):
                return None
            st.update(phase=mg.RUNNING, message=f"live-migrating from {self.ctx.node} to {target}")
            return st

        self.ctx.kube.update_migration_status(ns, mig_name, to_running)

    def _preflight(self, vm: Mapping[str, Any], mig: Mapping[str, Any]) -> tuple[str, DomainRef, Mapping[str, Any]]:
        """What must hold before the transfer starts: the target's libvirt URI, the domain running
        here, no copy of it on the target, FailoverReady (by the migration's policy). Returns the
        URI, the domain and the FailoverVMMigration; raises _NotStarted."""
        ctx = self.ctx
        meta = vm["metadata"]
        target = mig["targetNode"]
        dname = domxml.domain_name(meta["namespace"], meta["name"])
        node_obj = ctx.kube.get_node(target)
        uri = _libvirt_uri(node_obj)
        if not uri:
            raise _NotStarted("TargetUnknown", f"node {target} has no {labels.LIBVIRT_URI} annotation")
        try:
            tenancy.check_destination(uri, node_obj or {}, allow_tcp=ctx.allow_tcp_migration)
        except tenancy.DestinationRefused as exc:  # never opened
            ctx.event(vm, "DestinationRefused", str(exc), warning=True)
            raise _NotStarted("DestinationRefused", str(exc)) from None
        dom = ctx.dm.lookup(dname)
        if dom is None or not ctx.dm.is_active(dom):
            raise _NotStarted("SourceNotRunning", "the domain is not running on the source node")
        problem = self._clear_target_leftover(vm, uri, target, dname)
        if problem:
            raise _NotStarted("TargetHasDomain", problem)
        mig_obj = ctx.kube.get_migration(meta["namespace"], mig["name"]) or {}
        refused = self._recheck_failover(vm, mig_obj, dom)
        if refused:
            raise _NotStarted(mg.FAILOVER_NOT_READY, refused)
        return uri, dom, mig_obj

    def _request(self, vm: Mapping[str, Any], mig: Mapping[str, Any], mig_obj: Mapping[str, Any],
                 dom: DomainRef) -> MigrationRequest:
        """The running domain as the target starts it (its VF teaming member pointed at the target's
        VF), and the definition the target keeps (built from the spec, as reconcile would there)."""
        ctx = self.ctx
        dname = domxml.domain_name(vm["metadata"]["namespace"], vm["metadata"]["name"])
        pool = ctx.kube.get_pool(((vm.get("spec") or {}).get("network") or {}).get("pool", "")) or {}
        persist_spec = domain_spec(
            vm,
            pool,
            storage=ctx.storage,
            vf=mig.get("targetPciAddress"),
            vf_node=mig["targetNode"],
            kvm_available=ctx.kvm,
            serial_log=f"{ctx.serial_log_dir}/{dname}.log" if ctx.serial_log_dir else None,
        )
        persist_xml = domxml.to_xml(domxml.build_domain(persist_spec, include_vf=False))
        dest_xml = destination_xml(ctx.dm.xml(dom, migratable=True), mig.get("targetPciAddress"))
        policy = migration_policy(vm, mig_obj)
        target = ctx.kube.get_node(mig["targetNode"])
        stream_uri, _ = stream_endpoint(target, "")
        listen = stream_uri.split("://", 1)[1].strip("[]") if stream_uri else None
        libvirt_host = (_libvirt_uri(target) or "").split("://", 1)[-1].split("/", 1)[0] or None
        return MigrationRequest(destination_xml=dest_xml, persistent_xml=persist_xml, transport=self.transport,
                                bandwidth_mibps=policy.bandwidth_mibps, auto_converge=policy.allow_auto_converge,
                                post_copy=policy.allow_post_copy, parallel_connections=policy.parallel_connections,
                                stream_uri=stream_uri, listen_address=listen,
                                tls_destination=libvirt_host if stream_uri and self.transport == "tls" else None)

    def _transfer(self, vm: Mapping[str, Any], mig: Mapping[str, Any], dom: DomainRef, uri: str,
                  request: MigrationRequest, policy: mp.EffectivePolicy) -> _Run | None:
        """Run the migration, with a thread reporting its progress, enforcing the policy's limits
        (abort, or switch to post-copy) and retrying a requested abort. None: it failed or was
        aborted, and that is recorded."""
        meta = vm["metadata"]
        ns, name, mig_name = meta["namespace"], meta["name"], mig["name"]
        _, endpoint = stream_endpoint(self.ctx.kube.get_node(mig["targetNode"]), uri)
        self._record_start(ns, mig_name, endpoint)
        run = _Run(monitor=mp.Monitor(policy), started=time.monotonic())
        stop_progress = threading.Event()
        progress = threading.Thread(target=self._progress, args=(dom, ns, mig_name, meta["uid"], run, stop_progress),
                                    daemon=True)
        progress.start()
        threading.Thread(target=self._mid_transfer, args=(dom,), daemon=True).start()
        log.info("migrating %s/%s to %s (%s, stream %s) with %s: %s", ns, name, mig["targetNode"], uri, endpoint,
                 mig_name, policy.describe(), extra={"vm": f"{ns}/{name}", "migration": mig_name})
        try:
            self.ctx.dm.migrate(dom, uri, request)
        except DomainError as exc:
            stop_progress.set()
            progress.join(timeout=5)
            stats = run_stats(run)
            if run.limit is not None:
                metrics.MIGRATIONS_LIMITED.labels(run.limit.reason).inc()
                self._finish_failed(vm, mig, run.limit.reason, run.limit.message, stats=stats)
            elif meta["uid"] in self.aborting or isinstance(exc, OperationAborted):
                self._finish_failed(vm, mig, "Aborted", f"aborted: {exc}", phase=mg.ABORTED, stats=stats)
            else:
                self._finish_failed(vm, mig, "MigrationFailed", str(exc), stats=stats)
            return None
        finally:
            stop_progress.set()
        progress.join(timeout=5)
        return run

    def _record_start(self, ns: str, mig_name: str, endpoint: str) -> None:
        def mutate(st: dict[str, Any]) -> dict[str, Any] | None:
            if st.get("phase") != mg.RUNNING:
                return None
            st["migrationEndpoint"] = endpoint
            return st

        try:
            self.ctx.kube.update_migration_status(ns, mig_name, mutate)
        except Exception as exc:  # informational: the transfer goes on
            log.warning("recording the stream endpoint of %s/%s failed: %s", ns, mig_name, exc)

    def _record_success(self, vm: Mapping[str, Any], mig: Mapping[str, Any], stats: dict[str, int],
                        wall: float) -> None:
        """The domain runs on the target now. Whatever the API says, never report a failure from
        here on: the source would start the VM again (a second copy). Retry, then leave it to the
        VM's reconcile, which finds the domain on the target and records the success."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                self._finish_succeeded(vm, mig, stats, wall)
                return
            except Exception as exc:
                log.warning("recording the completed migration of %s/%s failed (attempt %d): %s",
                            vm["metadata"]["namespace"], vm["metadata"]["name"], attempt + 1, exc)
                if attempt + 1 == RECORD_ATTEMPTS:
                    raise RecordLater(f"the domain runs on {mig.get('targetNode')}, but recording it failed: "
                                      f"{exc}") from exc
                time.sleep(2**attempt)

    def _recheck_failover(self, vm: Mapping[str, Any], mig_obj: Mapping[str, Any], dom: DomainRef) -> str:
        """Ask QEMU again, just before the transfer, whether the guest negotiated failover: the
        controller's gate used the last observed FailoverReady, which may be up to a resync old
        (a guest that rebooted into an OS without net_failover). Returns why the migration must
        not run (policy Require), or "". Under policy Warn a change for the worse is recorded on
        the migration (condition, warning, Events) and the migration runs."""
        ctx = self.ctx
        _probe, (_type, status, reason, message) = probe_failover(ctx.dm, dom)
        if conditions.status_text(status) == "True":
            return ""
        found = f"checked again on {ctx.node} just before the transfer: {message}"
        st = mig_obj.get("status") or {}
        if st.get("failoverPolicy") == mg.POLICY_REQUIRE:
            metrics.MIGRATIONS_WITHOUT_FAILOVER.labels("refused").inc()
            return f"{found}; refused because requireFailoverReady is set"
        recorded = conditions.get(st.get("conditions"), guestfailover.CONDITION) or {}
        if recorded.get("status") == "True":
            ns, mig_name = mig_obj["metadata"]["namespace"], mig_obj["metadata"]["name"]

            def warn(s: dict[str, Any]) -> dict[str, Any]:
                s["conditions"] = conditions.set_condition(s.get("conditions"), guestfailover.CONDITION, status,
                                                           reason, found)
                s["warnings"] = [*(s.get("warnings") or []), found][-64:]
                return s

            ctx.kube.update_migration_status(ns, mig_name, warn)
            metrics.MIGRATIONS_WITHOUT_FAILOVER.labels("warned").inc()
            for obj in (mig_obj, vm):
                ctx.event(obj, "FailoverNotNegotiated", f"migration {mig_name}: {found}", warning=True)
        return ""

    def _clear_target_leftover(self, vm: Mapping[str, Any], uri: str, target: str, dname: str) -> str:
        """Before the transfer starts, no copy of the VM may exist on the target: the VM is locked
        by this migration, so one there is the remains of an earlier migration that died with the
        target's libvirtd (the target's agent removes those too, but maybe not yet). A paused or
        stopped copy is removed; a running one makes the migration fail. Returns the problem, or ""."""
        with _remote(self.ctx.dm, uri) as there:
            if there is None:
                return ""  # the migration itself reports an unreachable target
            try:
                try:
                    left = there.lookup(dname)
                except DomainError:
                    return ""
                if left is None:
                    return ""
                state, _reason = there.state(left)
                if state == DomainState.RUNNING:
                    return f"a running domain {dname} already exists on {target}; not migrating a second copy there"
                there.clear_leftover(left)
            except DomainError as exc:
                return f"could not remove a leftover domain {dname} on {target}: {exc}"
        msg = f"removed a leftover copy of domain {dname} on {target} before migrating there"
        log.warning("%s", msg)
        self.ctx.event(vm, "StaleDomainRemoved", msg, warning=True)
        return ""

    def _progress(self, dom: DomainRef, ns: str, mig_name: str, uid: str, run: _Run, stop: threading.Event) -> None:
        """Sample the job every poll_interval: enforce the policy (Monitor), retry a requested
        abort, and report progress on the migration every PROGRESS_INTERVAL."""
        last = 0.0
        while not stop.wait(self.poll_interval):
            if uid in self.abort_requested:
                self._try_abort(uid, dom)
            try:
                job = self.ctx.dm.job_progress(dom)
            except DomainError:
                return
            if job.memory_total is None and job.data_remaining is None:
                continue  # no job (yet)
            self._enforce(dom, ns, mig_name, uid, run, job)
            if time.monotonic() - last < PROGRESS_INTERVAL:
                continue
            last = time.monotonic()
            self._report_progress(ns, mig_name, job, run)

    def _enforce(self, dom: DomainRef, ns: str, mig_name: str, uid: str, run: _Run, job: JobProgress) -> None:
        """Apply the policy to one job sample: the maximum downtime once, then abort or post-copy
        when the Monitor says so."""
        dm, policy = self.ctx.dm, run.monitor.policy
        run.throttle = max(run.throttle, job.auto_converge_throttle or 0)
        run.iteration = max(run.iteration, job.memory_iteration or 0)
        if policy.max_downtime_ms and not run.downtime_set:
            try:
                dm.set_max_downtime(dom, policy.max_downtime_ms)
                run.downtime_set = True
            except DomainError as exc:
                log.info("setting the maximum downtime of %s not possible yet: %s", dom.name, exc)
        elapsed = (job.time_elapsed_ms / 1000.0 if job.time_elapsed_ms is not None
                   else time.monotonic() - run.started)
        decision = run.monitor.observe(elapsed, job.data_remaining, job.memory_iteration, job.auto_converge_throttle)
        if decision.action == mp.ABORT:
            run.limit = decision
            log.warning("migration %s/%s: %s", ns, mig_name, decision.message)
            try:
                dm.abort_job(dom)
            except DomainError as exc:
                # Decided once: the progress loop asks again every sample until libvirt takes it.
                log.warning("abortJob of %s failed, retried: %s", dom.name, exc)
                with self.lock:
                    self.abort_requested.add(uid)
        elif decision.action == mp.START_POST_COPY:
            try:
                dm.start_post_copy(dom)
            except DomainError as exc:
                # Asked again at the next sample; aborted (PostCopyFailed) if libvirt keeps refusing.
                log.log(logging.DEBUG if run.monitor.switch_error else logging.WARNING,
                        "switching %s to post-copy failed (asked again every sample): %s", dom.name, exc)
                run.monitor.switch_failed(str(exc))
                return
            run.monitor.switched()
            run.post_copy = decision.message
            log.info("migration %s/%s: %s", ns, mig_name, decision.message)

            def switched(st: dict[str, Any]) -> dict[str, Any] | None:
                if st.get("phase") != mg.RUNNING:
                    return None
                st["conditions"] = conditions.set_condition(st.get("conditions"), "PostCopy", True, "Switched",
                                                            decision.message)
                return st

            try:
                self.ctx.kube.update_migration_status(ns, mig_name, switched)
            except Exception as exc:  # informational
                log.debug("recording post-copy failed: %s", exc)

    def _report_progress(self, ns: str, mig_name: str, job: JobProgress, run: _Run) -> None:
        total, done = job.memory_total, job.memory_processed
        iteration = "?" if job.memory_iteration is None else job.memory_iteration
        msg = (f"memory {100 * (done or 0) // total}% copied ({done} of {total} bytes)" if total
               else "copying memory") + f", iteration {iteration}"
        if job.data_remaining is not None:
            msg += f", {job.data_remaining} bytes remaining"
        if job.auto_converge_throttle:
            msg += f", guest throttled {job.auto_converge_throttle}% (auto-converge)"
        if run.post_copy:
            msg += ", post-copy"

        def mutate(st: dict[str, Any], msg: str = msg) -> dict[str, Any] | None:
            if st.get("phase") != mg.RUNNING:
                return None
            st["conditions"] = conditions.set_condition(st.get("conditions"), "Progress", True, "Copying", msg)
            return st

        try:
            self.ctx.kube.update_migration_status(ns, mig_name, mutate)
        except Exception as exc:  # progress is best effort
            log.debug("progress update failed: %s", exc)

    def _mid_transfer(self, dom: DomainRef) -> None:
        """The failpoint agent.migrate.mid-transfer: as soon as libvirt reports the migration job
        (a small guest's transfer may be over before it is seen: then within 2 s anyway)."""
        if not failpoints.enabled("agent.migrate.mid-transfer"):
            return
        for _ in range(40):
            try:
                if self.ctx.dm.job_running(dom):
                    break
            except DomainError:
                break
            time.sleep(0.05)
        failpoints.hit("agent.migrate.mid-transfer")

    def _completed_stats(self, uri: str, dname: str) -> dict[str, int]:
        with _remote(self.ctx.dm, uri) as there:
            if there is None:
                return {}
            try:
                dom = there.lookup(dname)
                return there.completed_job_stats(dom) if dom is not None else {}
            except DomainError:
                return {}

    # -- outcomes ---------------------------------------------------------------------------
    def _finish_succeeded(
        self, vm: Mapping[str, Any], mig: Mapping[str, Any], stats: dict[str, int], wall: float
    ) -> None:
        ctx = self.ctx
        meta = vm["metadata"]
        ns, name, mig_name, target = meta["namespace"], meta["name"], mig["name"], mig["targetNode"]
        old_vf = dict((vm.get("status") or {}).get("vf") or {})

        def move(st: dict[str, Any]) -> dict[str, Any] | None:
            if (st.get("migration") or {}).get("name") != mig_name:
                return None
            st["nodeName"] = target
            st["vf"] = {
                "node": target,
                "pf": old_vf.get("pf", ""),
                "pciAddress": mig.get("targetPciAddress"),
                "claimName": mig.get("targetClaim"),
            }
            st.pop("migration", None)
            st["phase"] = "Running"
            st["conditions"] = conditions.set_condition(
                st.get("conditions"),
                "Ready",
                True,
                "Migrated",
                f"live-migrated from {ctx.node} to {target} (downtime {stats.get('downtimeMs', '?')} ms)",
                meta.get("generation"),
            )
            return st

        ctx.kube.update_vm_status(ns, name, move, uid=meta["uid"])
        failpoints.hit("agent.migrate.after-vm-moved")
        ctx.kube.patch_vm(ns, name, {"metadata": {"labels": {labels.VM_NODE: target}}})
        failpoints.hit("agent.migrate.after-label")

        def done(st: dict[str, Any]) -> dict[str, Any]:
            st.update(
                phase=mg.SUCCEEDED,
                targetNode=target,
                stats=stats,
                endTimestamp=conditions.now_iso(precise=True),
                reason="",
                message=f"migrated from {ctx.node} to {target} in {wall:.1f}s",
            )
            return st

        ctx.kube.update_migration_status(ns, mig_name, done)
        log.info("migrated %s/%s to %s in %.1fs: %s", ns, name, target, wall, stats,
                 extra={"vm": f"{ns}/{name}", "migration": mig_name})
        metrics.record_migration_succeeded(ctx.node, wall, stats)

    def _finish_failed(
        self, vm: Mapping[str, Any], mig: Mapping[str, Any], reason: str, message: str, phase: str = mg.FAILED,
        check_target: bool = True, stats: Mapping[str, int] | None = None,
    ) -> None:
        """Record a failed (or aborted) migration and unlock the VM. When the domain is not running
        here any more, the target is asked first (check_target): a domain that arrived there is
        recorded as a success, and when the target cannot answer this raises OutcomeUnknown
        instead of unlocking a VM that may be running there."""
        ctx = self.ctx
        meta = vm["metadata"]
        ns, name, mig_name = meta["namespace"], meta["name"], mig.get("name")
        try:
            dom = ctx.dm.lookup(domxml.domain_name(ns, name))
            still_here = dom is not None and ctx.dm.is_active(dom)
        except DomainError as exc:
            # This node's libvirtd is gone (killed, restarting): whether the domain still runs here
            # is unknown, so the VM stays locked; the reconcile after libvirt reconnects finds out.
            self.libvirt_lost[meta["uid"]] = f"{reason}: {message}"
            raise LibvirtLost(f"the migration ended ({reason}: {message}) and libvirtd on {ctx.node} cannot be "
                                 f"asked whether the domain still runs here ({exc})") from exc
        if not still_here and check_target and mig.get("targetNode"):
            where, uri = self._on_target(vm, mig)
            if where == ON_TARGET_RUNNING:
                log.warning("migration %s of %s/%s reported %s, but the domain runs on %s: recording the success",
                            mig_name, ns, name, reason, mig["targetNode"])
                self._finish_succeeded(vm, mig, {**self._completed_stats(uri, domxml.domain_name(ns, name)),
                                                 **(stats or {})}, 0.0)
                return
            if where == ON_TARGET_UNKNOWN:
                raise OutcomeUnknown(f"the domain left {ctx.node} ({reason}: {message}) and {mig['targetNode']} "
                                     "cannot be asked whether it arrived there")

        def unlock(st: dict[str, Any]) -> dict[str, Any] | None:
            if (st.get("migration") or {}).get("name") != mig_name:
                return None
            st.pop("migration", None)
            if st.get("phase") == "Migrating":
                st["phase"] = "Running" if still_here else "Failed"
            return st

        ctx.kube.update_vm_status(ns, name, unlock, uid=meta["uid"])
        failpoints.hit("agent.migrate.failed.after-unlock")
        if mig_name:

            def fail(st: dict[str, Any]) -> dict[str, Any]:
                st.update(
                    phase=phase,
                    reason=reason,
                    endTimestamp=conditions.now_iso(precise=True),
                    message=f"{message}; the VM {'keeps running on' if still_here else 'is NOT running on'} {ctx.node}",
                )
                if stats:
                    st["stats"] = {**(st.get("stats") or {}), **stats}
                return st

            ctx.kube.update_migration_status(ns, mig_name, fail)
        log.warning("migration %s of %s/%s %s: %s", mig_name, ns, name, phase.lower(), message,
                    extra={"vm": f"{ns}/{name}", "migration": mig_name})
        metrics.record_migration(phase, ctx.node, standby_ms=(stats or {}).get("standbyMs"))

    def _recover(self, vm: Mapping[str, Any], mig: Mapping[str, Any], dom: DomainRef | None) -> Outcome:
        """The agent restarted while a migration ran (libvirtd kept driving it)."""
        dm = self.ctx.dm
        uid = vm["metadata"]["uid"]
        lost = self.libvirt_lost.pop(uid, None)
        if dom is not None and dm.is_active(dom):
            try:
                if dm.job_running(dom):
                    if mig.get("state") == mg.ABORTING:
                        dm.abort_job(dom)
                    else:
                        self._recover_limit(vm, mig, dom)
                    return Outcome("migrating", requeue_after=2.0)
            except DomainError:
                pass
            limit = self.recovered_limits.pop(uid, None)
            if limit is not None and mig.get("state") != mg.ABORTING:
                self._finish_failed(vm, mig, limit.reason, limit.message)
                return Outcome("migration-failed")
            if lost is not None:
                reason, message = ("LibvirtConnectionLost", f"libvirtd on {self.ctx.node} went away during the "
                                   f"migration ({lost}); back, it runs the domain here and no migration: it did not "
                                   "complete")
            else:
                reason, message = "AgentRestarted", "the agent restarted during the migration; it did not complete"
            self._finish_failed(vm, mig, reason, message,
                                phase=mg.ABORTED if mig.get("state") == mg.ABORTING else mg.FAILED)
            return Outcome("migration-failed")
        # The domain left this node: did it arrive on the target?
        where, uri = self._on_target(vm, mig)
        if where == ON_TARGET_RUNNING:
            dname = domxml.domain_name(vm["metadata"]["namespace"], vm["metadata"]["name"])
            self._finish_succeeded(vm, mig, self._completed_stats(uri, dname), 0.0)
            return Outcome("migration-succeeded")
        if where == ON_TARGET_UNKNOWN:
            # Never guess: the VM stays locked (and is not started here) until the target answers.
            self._outcome_pending(vm, OutcomeUnknown(
                f"the domain left {self.ctx.node} and {mig.get('targetNode')} cannot be asked whether it arrived"))
            return Outcome("migration-outcome-unknown", requeue_after=10.0)
        self._finish_failed(vm, mig, "DomainLost", "the domain is neither on the source nor on the target",
                            check_target=False)
        return Outcome("migration-failed")

    def _recover_limit(self, vm: Mapping[str, Any], mig: Mapping[str, Any], dom: DomainRef) -> None:
        """A migration libvirtd drives on without this agent's monitor (it restarted) stays bounded:
        past its completion timeout (by libvirt's own clock) it is aborted, or switched to
        post-copy where the policy allows it. (The progress timeout needs the samples the old
        process had; the completion timeout bounds it anyway.)"""
        job = self.ctx.dm.job_progress(dom)
        if job.time_elapsed_ms is None:
            return
        mig_obj = self.ctx.kube.get_migration(vm["metadata"]["namespace"], str(mig.get("name"))) or {}
        policy = migration_policy(vm, mig_obj)
        decision = mp.Monitor(policy).observe(job.time_elapsed_ms / 1000.0, None, job.memory_iteration)
        if decision.action == mp.ABORT:
            log.warning("migration %s of %s (recovered after an agent restart): %s", mig.get("name"), dom.name,
                        decision.message)
            self.ctx.dm.abort_job(dom)
            self.recovered_limits[vm["metadata"]["uid"]] = decision
        elif decision.action == mp.START_POST_COPY:
            try:
                self.ctx.dm.start_post_copy(dom)
            except DomainError as exc:  # not started with post-copy, or already in it
                log.info("post-copy for the recovered migration of %s: %s", dom.name, exc)

    def _on_target(self, vm: Mapping[str, Any], mig: Mapping[str, Any]) -> tuple[str, str]:
        """Whether the VM's domain runs on the migration's target node: (ON_TARGET_*, its libvirt URI)."""
        target = mig.get("targetNode")
        node_obj = self.ctx.kube.get_node(target) if target else None
        uri = _libvirt_uri(node_obj)
        if not uri or nodehealth.is_fenced(node_obj):
            # No target node (any more), a target known to be shut down (out-of-service), or one
            # whose agent never announced its libvirt (then no transfer to it can have started).
            return ON_TARGET_ABSENT, ""
        try:
            tenancy.check_destination(uri, node_obj or {}, allow_tcp=self.ctx.allow_tcp_migration)
        except tenancy.DestinationRefused:
            return ON_TARGET_UNKNOWN, ""  # not opened; it may hold the domain: never assume it does not
        dname = domxml.domain_name(vm["metadata"]["namespace"], vm["metadata"]["name"])
        with _remote(self.ctx.dm, uri) as there:
            if there is None:
                return ON_TARGET_UNKNOWN, uri
            try:
                dom = there.lookup(dname)
                if dom is None:
                    return ON_TARGET_ABSENT, uri
                state, _reason = there.state(dom)
            except DomainError:
                return ON_TARGET_UNKNOWN, uri
            # Paused on arrival (incoming migration not finished) counts as there: it may resume.
            return (ON_TARGET_RUNNING if state in (DomainState.RUNNING, DomainState.PAUSED) else ON_TARGET_ABSENT), uri
