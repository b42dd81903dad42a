"""FakeDomainManager: the agent's DomainManager protocol (agent/domains.py) over in-memory domains.

`domains[name]` holds FakeDomain records a test adds (`add(name, state=...)`) or the agent defines.
`calls` lists the changing calls in order ("define", "start", "stop", "destroy", "undefine",
"attach_vf", "migrate", "abort_job", "clear_leftover"), failed ones too; queries are not listed.
`fail(method, *errors)` makes the next calls of a method raise (e.g. a DomainError as libvirt
would). `probes` queues failover_probe answers (a FailoverProbe, or an exception to raise) before
the domain's own `probe`. Other hosts are FakeDomainManagers in `remotes[uri]`: open_remote finds
them there (an unknown URI cannot be reached), and migrate moves the domain into the one at the URI.
`slow_migration(name, samples)` makes the next migration of a domain a running job: migrate blocks,
each job_progress returns the next scripted sample, and the migration ends when abort_job cancels
it (OperationAborted), start_post_copy switches it (it completes), or, with ends=True, after the
last sample.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, TypeVar

from failovervm import domxml
from failovervm.agent.domains import (
    SHUTDOWN_TIMEOUT,
    DomainError,
    DomainInfo,
    DomainManager,
    DomainNotFound,
    DomainRef,
    DomainState,
    DomainStatus,
    JobProgress,
    MigrationRequest,
    OperationAborted,
    OperationInvalid,
)
from failovervm.guestfailover import FailoverProbe
from tests.fakes.failures import Failures, P, R, failable

NEGOTIATED = FailoverProbe(offered=True, negotiated=True, driver_ok=True)
INACTIVE = (DomainState.SHUTOFF, DomainState.NOSTATE)


def minimal_xml(name: str, uid: str) -> str:
    return f"<domain type='test'><name>{name}</name><uuid>{uid}</uuid></domain>"


@dataclass
class FakeDomain:
    name: str
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    xml: str = ""  # the persistent definition (minimal_xml when empty)
    state: DomainState = DomainState.SHUTOFF
    reason: int = 0
    persistent: bool = True  # undefined while running: gone once it stops
    live_xml: str | None = None  # the running domain's XML (the definition it booted with)
    vf_attached: bool = False
    probe: FailoverProbe | Exception = NEGOTIATED
    job: JobProgress | None = None  # a job (migration) in progress
    running_job: FakeMigration | None = None  # a slow_migration under way (migrate is blocked in it)
    completed_stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xml = self.xml or minimal_xml(self.name, self.uuid)
        if self.active and self.live_xml is None:
            self.live_xml = self.xml

    @property
    def active(self) -> bool:
        return self.state not in INACTIVE

    def ref(self) -> DomainRef:
        return DomainRef(self.name, self.uuid)


@dataclass
class FakeMigration:
    """A migration job that runs until the agent ends it (see slow_migration)."""

    samples: list[JobProgress]
    ends: bool = False  # completes on its own after the last sample
    aborted: bool = False
    post_copy: bool = False
    exhausted: bool = False
    allows_post_copy: bool = False


D = TypeVar("D", bound="FakeDomainManager")


def change(method: Callable[Concatenate[D, P], R]) -> Callable[Concatenate[D, P], R]:
    """A changing call: listed in `calls` (failed ones too), then @failable."""
    checked = failable(method)

    @functools.wraps(method)
    def call(self: D, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.calls.append(method.__name__)
        return checked(self, *args, **kwargs)

    return call


class FakeDomainManager(Failures):
    def __init__(self, *, kvm: bool = True) -> None:
        super().__init__()
        self.domains: dict[str, FakeDomain] = {}
        self.remotes: dict[str, FakeDomainManager] = {}
        self.calls: list[str] = []
        self.probes: list[FailoverProbe | Exception] = []
        self.migrations: list[tuple[str, str, MigrationRequest]] = []  # (domain, uri, request)
        self.kvm = kvm
        self.stop_how = "shutdown"  # how a graceful stop() ends ("destroyed": the guest ignored ACPI)
        self.closed = False
        self.slow: dict[str, FakeMigration] = {}  # domain name -> its next migration, a running job
        self.max_downtime: dict[str, int] = {}  # domain name -> set_max_downtime's milliseconds
        self._cv = threading.Condition()
        # What image_info reports per path (qemu-img info's JSON); a path not listed reads as a
        # plain image of the format asked for, without a backing file.
        self.images: dict[str, dict[str, Any]] = {}
        self.opened: list[str] = []  # the URIs open_remote was asked for, in order

    # -- test controls -------------------------------------------------------------------------
    def add(self, name: str, state: DomainState = DomainState.RUNNING, reason: int = 0, *, xml: str = "",
            probe: FailoverProbe | Exception = NEGOTIATED) -> DomainRef:
        """Put a domain here (running unless told otherwise); returns its handle."""
        return self.put(FakeDomain(name, state=state, reason=reason, xml=xml, probe=probe))

    def put(self, dom: FakeDomain) -> DomainRef:
        """Put a domain described in full here; returns its handle."""
        self.domains[dom.name] = dom
        return dom.ref()

    def slow_migration(self, name: str, samples: list[JobProgress], *, ends: bool = False) -> FakeMigration:
        """The domain's next migration runs as a job reporting `samples` (see the module docstring)."""
        self.slow[name] = FakeMigration(list(samples), ends=ends)
        return self.slow[name]

    def remote(self, uri: str) -> FakeDomainManager:
        """The host at `uri` (created empty on first use): open_remote and migrate reach it."""
        return self.remotes.setdefault(uri, FakeDomainManager())

    # -- queries -------------------------------------------------------------------------------
    @failable
    def lookup(self, name: str) -> DomainRef | None:
        dom = self.domains.get(name)
        return dom.ref() if dom is not None else None

    @failable
    def owned_domains(self) -> list[DomainInfo]:
        infos = [DomainInfo(d.name, d.uuid, d.active, d.state, d.reason, domxml.parse_owner(d.xml))
                 for d in self.domains.values()]
        return [i for i in infos if i.owner is not None]

    def kvm_available(self) -> bool:
        return self.kvm

    @failable
    def is_active(self, dom: DomainRef) -> bool:
        return self._get(dom).active

    @failable
    def state(self, dom: DomainRef) -> DomainStatus:
        d = self._get(dom)
        return DomainStatus(d.state, d.reason)

    @failable
    def xml(self, dom: DomainRef, *, inactive: bool = False, migratable: bool = False) -> str:
        d = self._get(dom)
        return d.xml if inactive or d.live_xml is None else d.live_xml

    @failable
    def has_vf(self, dom: DomainRef) -> bool:
        return self._get(dom).vf_attached

    @failable
    def failover_probe(self, dom: DomainRef) -> FailoverProbe:
        answer = self.probes.pop(0) if self.probes else self._get(dom).probe
        if isinstance(answer, Exception):
            raise answer
        return answer

    @failable
    def image_info(self, path: str, fmt: str) -> dict[str, Any]:
        info = self.images.get(path, {"filename": path, "format": fmt})
        if info.get("format") != fmt and fmt != "raw":  # qemu-img -f raw reads anything as raw
            raise DomainError(f"cannot read {path!r} as {fmt}: Image is not in {fmt} format")
        return dict(info) if fmt != "raw" else {"filename": path, "format": "raw"}

    # -- changes -------------------------------------------------------------------------------
    @change
    def define(self, xml: str) -> DomainRef:
        el = domxml.parse_xml(xml)
        name = str(el.findtext("name"))
        dom = self.domains.get(name)
        if dom is None:
            dom = self.domains[name] = FakeDomain(name, uuid=el.findtext("uuid") or str(uuid.uuid4()), xml=xml)
        dom.xml, dom.persistent = xml, True
        return dom.ref()

    @change
    def start(self, dom: DomainRef) -> None:
        d = self._get(dom)
        if d.active:
            raise OperationInvalid("Requested operation is not valid: domain is already running", 55)
        d.state, d.reason, d.live_xml, d.vf_attached = DomainState.RUNNING, 1, d.xml, False

    @change
    def stop(self, dom: DomainRef, timeout: float = SHUTDOWN_TIMEOUT) -> str:
        d = self._get(dom)
        if not d.active:
            return "inactive"
        self._power_off(d)
        return "destroyed" if timeout <= 0 else self.stop_how

    @change
    def destroy(self, dom: DomainRef) -> None:
        d = self._get(dom)
        if d.active:
            self._power_off(d)

    @change
    def undefine(self, dom: DomainRef) -> None:
        d = self.domains.get(dom.name)
        if d is not None and d.active:
            d.persistent = False
        elif d is not None:
            del self.domains[dom.name]

    @change
    def attach_vf(self, dom: DomainRef, spec: domxml.DomainSpec) -> None:
        self._get(dom).vf_attached = True

    # -- migration -----------------------------------------------------------------------------
    @change
    def migrate(self, dom: DomainRef, uri: str, request: MigrationRequest) -> None:
        d = self._get(dom)
        self.migrations.append((dom.name, uri, request))
        target = self.remotes.get(uri)
        if target is None:
            raise DomainError(f"unable to connect to server at '{uri}': Connection refused", 38)
        job = self.slow.pop(d.name, None)
        if job is not None:
            self._run_job(d, job, request)
        target.domains[d.name] = FakeDomain(d.name, uuid=d.uuid, xml=request.persistent_xml, state=DomainState.RUNNING,
                                            live_xml=request.destination_xml, completed_stats=dict(d.completed_stats))
        del self.domains[d.name]

    def _run_job(self, d: FakeDomain, job: FakeMigration, request: MigrationRequest) -> None:
        """Block like libvirt's migrateToURI3 until the job is aborted, switched to post-copy, or done."""
        job.allows_post_copy = request.post_copy
        with self._cv:
            d.job = job.samples[0] if job.samples else JobProgress()
            d.running_job = job
            ended = self._cv.wait_for(lambda: job.aborted or job.post_copy or (job.ends and job.exhausted), timeout=30)
            d.job, d.running_job = None, None
        if job.aborted:
            raise OperationAborted("operation aborted: migration out job: canceled by client", 1)
        if not ended:
            raise DomainError("fake migration never ended: nobody aborted it or switched it to post-copy")

    @change
    def start_post_copy(self, dom: DomainRef) -> None:
        d = self._get(dom)
        job = d.running_job
        if job is None or not job.allows_post_copy:
            raise OperationInvalid("Requested operation is not valid: post-copy migration is not enabled", 55)
        with self._cv:
            job.post_copy = True
            self._cv.notify_all()

    @change
    def set_max_downtime(self, dom: DomainRef, milliseconds: int) -> None:
        self._get(dom)
        self.max_downtime[dom.name] = milliseconds

    @change
    def abort_job(self, dom: DomainRef) -> None:
        d = self._get(dom)
        if d.running_job is not None:
            with self._cv:
                d.running_job.aborted = True
                self._cv.notify_all()
            return
        if d.job is None:
            raise OperationInvalid("Requested operation is not valid: no job is active on the domain", 55)
        d.job = None

    @failable
    def job_running(self, dom: DomainRef) -> bool:
        return self._get(dom).job is not None

    @failable
    def job_progress(self, dom: DomainRef) -> JobProgress:
        d = self._get(dom)
        job = d.running_job
        if job is not None:
            with self._cv:
                if job.samples:
                    d.job = job.samples.pop(0)
                if not job.samples:
                    job.exhausted = True
                    self._cv.notify_all()
        return d.job or JobProgress()

    @failable
    def completed_job_stats(self, dom: DomainRef) -> dict[str, int]:
        return dict(self._get(dom).completed_stats)

    # -- other hosts ---------------------------------------------------------------------------
    @failable
    def open_remote(self, uri: str) -> DomainManager:
        self.opened.append(uri)
        if uri not in self.remotes:
            raise DomainError(f"unable to connect to server at '{uri}': Connection refused", 38)
        there = self.remotes[uri]
        there.closed = False
        return there

    @change
    def clear_leftover(self, dom: DomainRef) -> None:
        self.domains.pop(dom.name, None)

    def close(self) -> None:
        self.closed = True

    # -- internals -----------------------------------------------------------------------------
    def _get(self, ref: DomainRef) -> FakeDomain:
        dom = self.domains.get(ref.name)
        if dom is None or dom.uuid != ref.uuid:
            raise DomainNotFound(f"Domain not found: no domain with matching uuid '{ref.uuid}' ({ref.name})", 42)
        return dom

    def _power_off(self, dom: FakeDomain) -> None:
        dom.state, dom.reason, dom.live_xml, dom.vf_attached, dom.job = DomainState.SHUTOFF, 0, None, False, None
        if not dom.persistent:
            del self.domains[dom.name]


_: DomainManager = FakeDomainManager()
