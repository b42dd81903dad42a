"""The agent's libvirt connection: libvirtaio events, lifecycle callbacks, reconnect with backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import libvirt
import libvirt_qemu
import libvirtaio

from failovervm.guestfailover import NEGOTIATED_EVENT
from failovervm.metrics import LIBVIRT_CONNECTED

log = logging.getLogger(__name__)
_AIO_REGISTERED = False

LIFECYCLE_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "Defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "Undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "Started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "Suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "Resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "Stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "Shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "PMSuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "Crashed",
}

DomainCallback = Callable[[str, str, int], None]


def register_event_loop() -> None:
    """Plug libvirt's event loop into asyncio (once per process, before the first connection)."""
    global _AIO_REGISTERED
    if not _AIO_REGISTERED:
        # libvirt-python prints every error to stderr by default; the agent handles them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())
        _AIO_REGISTERED = True


class LibvirtConnection:
    """Keeps one connection open; `on_domain_event(name, event, detail)` gets lifecycle events,
    `on_reconnect()` runs after every (re)connection so the caller can resync."""

    def __init__(self, uri: str, node: str, on_domain_event: DomainCallback,
                 on_reconnect: Callable[[], None]) -> None:
        self.uri = uri
        self.node = node
        self.on_domain_event = on_domain_event
        self.on_reconnect = on_reconnect
        self.conn: libvirt.virConnect | None = None
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()

    def _notify(self, dom: libvirt.virDomain, event: str, detail: int) -> None:
        """Pass a libvirt/QEMU event on; a failing callback must not break libvirt's event loop."""
        try:
            self.on_domain_event(dom.name(), event, detail)
        except Exception:
            log.exception("domain event callback failed (%s)", event)

    def _lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int,
                   _opaque: object) -> None:
        self._notify(dom, LIFECYCLE_EVENTS.get(event, str(event)), detail)

    def _reboot(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, _opaque: object) -> None:
        self._notify(dom, "Rebooted", 0)

    def _qemu_event(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: str, _secs: int,
                    _micros: int, _details: object, _opaque: object) -> None:
        self._notify(dom, event, 0)

    def _closed(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        log.warning("libvirt connection to %s closed (reason %d)", self.uri, reason)
        self._mark_lost()

    def _mark_lost(self) -> None:
        self.connected.clear()
        LIBVIRT_CONNECTED.labels(self.node).set(0)
        self._lost.set()

    async def _open(self) -> libvirt.virConnect:
        conn = await asyncio.to_thread(libvirt.open, self.uri)
        conn.setKeepAlive(5, 3)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._reboot, None)
        try:
            # The guest driver acked STANDBY: re-evaluate FailoverReady at once instead of polling.
            libvirt_qemu.qemuMonitorEventRegister(conn, None, NEGOTIATED_EVENT, self._qemu_event, None, 0)
        except libvirt.libvirtError as exc:
            log.warning("cannot subscribe to QEMU %s events (%s); relying on periodic checks",
                        NEGOTIATED_EVENT, exc)
        conn.registerCloseCallback(self._closed, None)
        return conn

    async def run(self) -> None:
        """Connect, and reconnect with exponential backoff (0.5 s .. 30 s) whenever the link drops."""
        register_event_loop()
        backoff = 0.5
        while True:
            try:
                self.conn = await self._open()
            except libvirt.libvirtError as exc:
                log.warning("cannot connect to %s: %s; retrying in %.1fs", self.uri, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            log.info("connected to libvirt at %s", self.uri)
            LIBVIRT_CONNECTED.labels(self.node).set(1)
            self._lost.clear()
            self.connected.set()
            try:
                self.on_reconnect()
            except Exception:
                log.exception("resync after connect failed")
            await self._watch_alive()
            old, self.conn = self.conn, None
            try:
                old.close()
            except libvirt.libvirtError:
                pass

    async def _watch_alive(self) -> None:
        # The close callback fires on keepalive timeout or EOF; poll isAlive as a safety net.
        while not self._lost.is_set():
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=5.0)
            except TimeoutError:
                conn = self.conn
                if conn is None or not await asyncio.to_thread(self._alive, conn):
                    self._mark_lost()

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive()) and conn.getLibVersion() > 0
        except libvirt.libvirtError:
            return False

    def lost(self) -> None:
        """Callers report a failed call that indicates the connection is gone."""
        self._mark_lost()
