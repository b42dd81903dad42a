"""LibvirtDomainManager: the DomainManager protocol (agent/domains.py) over libvirt-python.

The only place where the agent's logic meets libvirt and libvirt_qemu (agent/connection.py keeps
the connection itself): libvirt's domains become DomainRef handles, its states DomainState, its
migration flags and typed parameters come from a MigrationRequest, and every libvirtError leaves
as a DomainError (DomainNotFound, OperationInvalid, OperationAborted) with the same message.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt
import libvirt_qemu
from lxml import etree

from failovervm import domxml, guestfailover
from failovervm import migration as mg
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

_ERRORS: dict[int, type[DomainError]] = {
    libvirt.VIR_ERR_NO_DOMAIN: DomainNotFound,
    libvirt.VIR_ERR_OPERATION_INVALID: OperationInvalid,
    libvirt.VIR_ERR_OPERATION_ABORTED: OperationAborted,
}


def domain_error(exc: libvirt.libvirtError) -> DomainError:
    """libvirt's error as the project's: the class by its code, the message unchanged."""
    code = int(exc.get_error_code() or 0)
    return _ERRORS.get(code, DomainError)(str(exc), code)


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        raise domain_error(exc) from exc


def migration_flags(request: MigrationRequest) -> int:
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    if request.transport == "tls":
        flags |= libvirt.VIR_MIGRATE_TLS
    if request.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if request.post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if request.parallel_connections > 1:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
    return int(flags)


def migration_params(request: MigrationRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: request.destination_xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: request.persistent_xml,
    }
    if request.bandwidth_mibps is not None:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(request.bandwidth_mibps)
    if request.parallel_connections > 1:
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = int(request.parallel_connections)
    if request.stream_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = request.stream_uri
    if request.listen_address:
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = request.listen_address
    if request.tls_destination:
        params[libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION] = request.tls_destination
    return params


def _ref(dom: libvirt.virDomain) -> DomainRef:
    return DomainRef(name=dom.name(), uuid=dom.UUIDString(), impl=dom)


def _virdom(ref: DomainRef) -> Any:
    return ref.impl


class LibvirtDomainManager:
    """One libvirt connection's domains. `owns_connection`: close() closes it (open_remote's)."""

    def __init__(self, conn: libvirt.virConnect, owns_connection: bool = False) -> None:
        self.conn = conn
        self.owns_connection = owns_connection

    # -- queries -------------------------------------------------------------------------------
    def lookup(self, name: str) -> DomainRef | None:
        try:
            return _ref(self.conn.lookupByName(name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise domain_error(exc) from exc

    @staticmethod
    def _info(dom: libvirt.virDomain) -> DomainInfo:
        state, reason = dom.state()
        return DomainInfo(
            name=dom.name(), uuid=dom.UUIDString(), active=bool(dom.isActive()), state=DomainState(state),
            reason=int(reason), owner=domxml.parse_owner(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)),
        )

    def owned_domains(self) -> list[DomainInfo]:
        out = []
        with translated():
            doms = self.conn.listAllDomains()
        for dom in doms:
            try:
                info = self._info(dom)
            except libvirt.libvirtError:
                continue  # vanished meanwhile
            if info.owner is not None:
                out.append(info)
        return out

    def kvm_available(self) -> bool:
        try:
            caps = self.conn.getDomainCapabilities(None, "x86_64", "q35", "kvm", 0)
        except libvirt.libvirtError:
            return False
        return etree.fromstring(caps.encode()).findtext("domain") == "kvm"

    def is_active(self, dom: DomainRef) -> bool:
        with translated():
            return bool(_virdom(dom).isActive())

    def state(self, dom: DomainRef) -> DomainStatus:
        with translated():
            state, reason = _virdom(dom).state()
        return DomainStatus(DomainState(state), int(reason))

    def xml(self, dom: DomainRef, *, inactive: bool = False, migratable: bool = False) -> str:
        flags = (libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0) | (
            libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0)
        with translated():
            return str(_virdom(dom).XMLDesc(flags))

    def has_vf(self, dom: DomainRef) -> bool:
        live = domxml.parse_xml(self.xml(dom))
        return any(a.get("name") == domxml.VF_ALIAS for a in live.iterfind("devices/interface/alias"))

    def failover_probe(self, dom: DomainRef) -> guestfailover.FailoverProbe:
        # QEMU monitor passthrough; libvirt marks the domain tainted "custom-monitor", which is harmless.
        with translated():
            reply = libvirt_qemu.qemuMonitorCommand(_virdom(dom), guestfailover.status_command(), 0)
        return guestfailover.parse_status(reply)

    def image_info(self, path: str, fmt: str) -> dict[str, Any]:
        # One image at a time (never --backing-chain, which opens every backing file a header names
        # before anything could check it); -U: the image may be open in a running domain.
        cmd = ["qemu-img", "info", "-U", "-f", fmt, "--output=json", "--", path]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DomainError(f"qemu-img info {path}: {exc}") from None
        if res.returncode != 0:
            raise DomainError(f"cannot read {path!r} as {fmt}: {res.stderr.strip() or res.returncode}")
        info = json.loads(res.stdout)
        if not isinstance(info, dict):
            raise DomainError(f"qemu-img info {path}: unexpected output")
        return info

    # -- changes -------------------------------------------------------------------------------
    def define(self, xml: str) -> DomainRef:
        with translated():
            return _ref(self.conn.defineXML(xml))

    def start(self, dom: DomainRef) -> None:
        with translated():
            _virdom(dom).create()

    def stop(self, dom: DomainRef, timeout: float = SHUTDOWN_TIMEOUT) -> str:
        with translated():
            return self._stop(_virdom(dom), timeout)

    @staticmethod
    def _stop(dom: libvirt.virDomain, timeout: float) -> str:
        if not dom.isActive():
            return "inactive"
        if timeout <= 0:
            if dom.isActive():
                dom.destroy()
            return "destroyed"
        try:
            dom.shutdown()
        except libvirt.libvirtError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not dom.isActive():
                return "shutdown"
            time.sleep(0.5)
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                raise exc
        return "destroyed"

    def destroy(self, dom: DomainRef) -> None:
        with translated():
            if _virdom(dom).isActive():
                _virdom(dom).destroy()

    def undefine(self, dom: DomainRef) -> None:
        try:
            _virdom(dom).undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise domain_error(exc) from exc

    def attach_vf(self, dom: DomainRef, spec: domxml.DomainSpec) -> None:
        xml = domxml.build_vf_interface_xml(spec)
        domxml.check_teaming(domxml.parse_xml(self.xml(dom)), extra_devices=[domxml.parse_xml(xml)])
        with translated():
            _virdom(dom).attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    # -- migration -----------------------------------------------------------------------------
    def migrate(self, dom: DomainRef, uri: str, request: MigrationRequest) -> None:
        with translated():
            _virdom(dom).migrateToURI3(uri, migration_params(request), migration_flags(request))

    def abort_job(self, dom: DomainRef) -> None:
        with translated():
            _virdom(dom).abortJob()

    def job_running(self, dom: DomainRef) -> bool:
        with translated():
            info = _virdom(dom).jobInfo()
        return bool(info) and info[0] not in (libvirt.VIR_DOMAIN_JOB_NONE, libvirt.VIR_DOMAIN_JOB_COMPLETED)

    def job_progress(self, dom: DomainRef) -> JobProgress:
        with translated():
            js = _virdom(dom).jobStats()
        return JobProgress(memory_total=js.get("memory_total"), memory_processed=js.get("memory_processed"),
                           memory_iteration=js.get("memory_iteration"), data_remaining=js.get("data_remaining"),
                           time_elapsed_ms=js.get("time_elapsed"),
                           auto_converge_throttle=js.get("auto_converge_throttle"))

    def start_post_copy(self, dom: DomainRef) -> None:
        with translated():
            _virdom(dom).migrateStartPostCopy(0)

    def set_max_downtime(self, dom: DomainRef, milliseconds: int) -> None:
        with translated():
            _virdom(dom).migrateSetMaxDowntime(int(milliseconds), 0)

    def completed_job_stats(self, dom: DomainRef) -> dict[str, int]:
        with translated():
            return mg.job_stats(_virdom(dom).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))

    # -- other hosts ---------------------------------------------------------------------------
    def open_remote(self, uri: str) -> DomainManager:
        with translated():
            return LibvirtDomainManager(libvirt.open(uri), owns_connection=True)

    def clear_leftover(self, dom: DomainRef) -> None:
        left = _virdom(dom)
        for step in (left.destroy, left.undefine):
            try:
                step()
            except libvirt.libvirtError as exc:
                # Not running / transient and gone / removed by that node's agent meanwhile: fine.
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    raise domain_error(exc) from exc

    def close(self) -> None:
        if self.owns_connection:
            with translated():
                self.conn.close()


_: type[DomainManager] = LibvirtDomainManager
