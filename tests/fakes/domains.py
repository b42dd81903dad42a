"""FakeDomainManager: the agent's DomainManager protocol (agent/domains.py) over in-memory domains.

`domains[name]` holds FakeDomain records a test adds (`add(name, state=...)`) or the agent defines.
`calls` lists the changing calls in order ("define", "start", "stop", "destroy", "undefine",
"attach_vf", "migrate", "abort_job", "clear_leftover"), failed ones too; queries are not listed.
`fail(method, *errors)` makes the next calls of a method raise (e.g. a DomainError as libvirt
would). `probes` queues failover_probe answers (a FailoverProbe, or an exception to raise) before
the domain's own `probe`. Other hosts are FakeDomainManagers in `remotes[uri]`: open_remote finds
them there (an unknown URI cannot be reached), and migrate moves the domain into the one at the URI.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

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
    OperationInvalid,
)
from failovervm.guestfailover import FailoverProbe

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


class FakeDomainManager:
    def __init__(self, *, kvm: bool = True) -> None:
        self.domains: dict[str, FakeDomain] = {}
        self.remotes: dict[str, FakeDomainManager] = {}
        self.calls: list[str] = []
        self.failures: dict[str, list[BaseException]] = {}
        self.probes: list[FailoverProbe | Exception] = []
        self.migrations: list[tuple[str, str, MigrationRequest]] = []  # (domain, uri, request)
        self.kvm = kvm
        self.stop_how = "shutdown"  # how a graceful stop() ends ("destroyed": the guest ignored ACPI)
        self.closed = False

    # -- test controls -------------------------------------------------------------------------
    def add(self, name: str, state: DomainState = DomainState.RUNNING, reason: int = 0, *, xml: str = "",
            probe: FailoverProbe | Exception = NEGOTIATED) -> DomainRef:
        """Put a domain here (running unless told otherwise); returns its handle."""
        return self.put(FakeDomain(name, state=state, reason=reason, xml=xml, probe=probe))

    def put(self, dom: FakeDomain) -> DomainRef:
        """Put a domain described in full here; returns its handle."""
        self.domains[dom.name] = dom
        return dom.ref()

    def fail(self, method: str, *errors: BaseException) -> None:
        """The next len(errors) calls of `method` (e.g. "start") raise these, in order."""
        self.failures.setdefault(method, []).extend(errors)

    def remote(self, uri: str) -> FakeDomainManager:
        """The host at `uri` (created empty on first use): open_remote and migrate reach it."""
        return self.remotes.setdefault(uri, FakeDomainManager())

    # -- queries -------------------------------------------------------------------------------
    def lookup(self, name: str) -> DomainRef | None:
        self._maybe_fail("lookup")
        dom = self.domains.get(name)
        return dom.ref() if dom is not None else None

    def owned_domains(self) -> list[DomainInfo]:
        self._maybe_fail("owned_domains")
        infos = [DomainInfo(d.name, d.uuid, d.active, d.state, d.reason, domxml.parse_owner(d.xml))
                 for d in self.domains.values()]
        return [i for i in infos if i.owner is not None]

    def kvm_available(self) -> bool:
        return self.kvm

    def is_active(self, dom: DomainRef) -> bool:
        return self._get(dom, "is_active").active

    def state(self, dom: DomainRef) -> DomainStatus:
        d = self._get(dom, "state")
        return DomainStatus(d.state, d.reason)

    def xml(self, dom: DomainRef, *, inactive: bool = False, migratable: bool = False) -> str:
        d = self._get(dom, "xml")
        return d.xml if inactive or d.live_xml is None else d.live_xml

    def has_vf(self, dom: DomainRef) -> bool:
        return self._get(dom, "has_vf").vf_attached

    def failover_probe(self, dom: DomainRef) -> FailoverProbe:
        answer = self.probes.pop(0) if self.probes else self._get(dom, "failover_probe").probe
        if isinstance(answer, Exception):
            raise answer
        return answer

    # -- changes -------------------------------------------------------------------------------
    def define(self, xml: str) -> DomainRef:
        self._change("define")
        el = domxml.parse_xml(xml)
        name = str(el.findtext("name"))
        dom = self.domains.get(name)
        if dom is None:
            dom = self.domains[name] = FakeDomain(name, uuid=el.findtext("uuid") or str(uuid.uuid4()), xml=xml)
        dom.xml, dom.persistent = xml, True
        return dom.ref()

    def start(self, dom: DomainRef) -> None:
        d = self._get(dom, "start", change=True)
        if d.active:
            raise OperationInvalid("Requested operation is not valid: domain is already running", 55)
        d.state, d.reason, d.live_xml, d.vf_attached = DomainState.RUNNING, 1, d.xml, False

    def stop(self, dom: DomainRef, timeout: float = SHUTDOWN_TIMEOUT) -> str:
        d = self._get(dom, "stop", change=True)
        if not d.active:
            return "inactive"
        self._power_off(d)
        return "destroyed" if timeout <= 0 else self.stop_how

    def destroy(self, dom: DomainRef) -> None:
        d = self._get(dom, "destroy", change=True)
        if d.active:
            self._power_off(d)

    def undefine(self, dom: DomainRef) -> None:
        self._change("undefine")
        d = self.domains.get(dom.name)
        if d is not None and d.active:
            d.persistent = False
        elif d is not None:
            del self.domains[dom.name]

    def attach_vf(self, dom: DomainRef, spec: domxml.DomainSpec) -> None:
        self._get(dom, "attach_vf", change=True).vf_attached = True

    # -- migration -----------------------------------------------------------------------------
    def migrate(self, dom: DomainRef, uri: str, request: MigrationRequest) -> None:
        d = self._get(dom, "migrate", change=True)
        self.migrations.append((dom.name, uri, request))
        target = self.remotes.get(uri)
        if target is None:
            raise DomainError(f"unable to connect to server at '{uri}': Connection refused", 38)
        target.domains[d.name] = FakeDomain(d.name, uuid=d.uuid, xml=request.persistent_xml, state=DomainState.RUNNING,
                                            live_xml=request.destination_xml, completed_stats=dict(d.completed_stats))
        del self.domains[d.name]

    def abort_job(self, dom: DomainRef) -> None:
        d = self._get(dom, "abort_job", change=True)
        if d.job is None:
            raise OperationInvalid("Requested operation is not valid: no job is active on the domain", 55)
        d.job = None

    def job_running(self, dom: DomainRef) -> bool:
        return self._get(dom, "job_running").job is not None

    def job_progress(self, dom: DomainRef) -> JobProgress:
        return self._get(dom, "job_progress").job or JobProgress()

    def completed_job_stats(self, dom: DomainRef) -> dict[str, int]:
        return dict(self._get(dom, "completed_job_stats").completed_stats)

    # -- other hosts ---------------------------------------------------------------------------
    def open_remote(self, uri: str) -> DomainManager:
        self._maybe_fail("open_remote")
        if uri not in self.remotes:
            raise DomainError(f"unable to connect to server at '{uri}': Connection refused", 38)
        there = self.remotes[uri]
        there.closed = False
        return there

    def clear_leftover(self, dom: DomainRef) -> None:
        self._change("clear_leftover")
        self.domains.pop(dom.name, None)

    def close(self) -> None:
        self.closed = True

    # -- internals -----------------------------------------------------------------------------
    def _maybe_fail(self, method: str) -> None:
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)

    def _change(self, method: str) -> None:
        self.calls.append(method)
        self._maybe_fail(method)

    def _get(self, ref: DomainRef, method: str, change: bool = False) -> FakeDomain:
        if change:
            self._change(method)
        else:
            self._maybe_fail(method)
        dom = self.domains.get(ref.name)
        if dom is None or dom.uuid != ref.uuid:
            raise DomainNotFound(f"Domain not found: no domain with matching uuid '{ref.uuid}' ({ref.name})", 42)
        return dom

    def _power_off(self, dom: FakeDomain) -> None:
        dom.state, dom.reason, dom.live_xml, dom.vf_attached, dom.job = DomainState.SHUTOFF, 0, None, False, None
        if not dom.persistent:
            del self.domains[dom.name]


_: DomainManager = FakeDomainManager()
