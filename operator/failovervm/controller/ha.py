"""High availability of the controller: which replica is active.

Kopf's peering runs the handlers of exactly one replica: the live peer with the highest priority;
every other replica pauses its watches (and so its handlers, timers and indexes) and keeps serving
the admission webhooks. Two replicas with the same priority both pause, so every replica needs its
own. The oldest replica wins here: a replica that starts later (a rolling update, a rescheduled
pod) never preempts the active one, it waits until that one is gone.

A replica killed with SIGKILL leaves its peering entry behind until the entry's lifetime ends:
the standby sleeps until then and takes over (Kopf's own re-evaluation at the peer's deadline), so
the lifetime bounds the takeover. A replica that stops cleanly removes its entry at once."""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

# Seconds a replica's peering entry stays valid without a keepalive. Kopf refreshes it every
# max(1, lifetime - 5..10) seconds, so 10 s means a keepalive every 1-5 s (one small PATCH of the
# ClusterKopfPeering per replica) and a takeover at most ~10 s after the active replica died.
DEFAULT_PEERING_LIFETIME = 10

# Milliseconds since the epoch stay below this until the year 2286.
_EPOCH_MS_LIMIT = 10**13


def peering_priority(started_at: float | None = None, tiebreak: int | None = None) -> int:
    """A priority that is higher the earlier the replica started (millisecond resolution), with a
    random tiebreak for two replicas started in the same millisecond. Stays below 2**53, so every
    JSON reader of the peering object sees it exactly."""
    started_ms = int((time.time() if started_at is None else started_at) * 1000)
    tie = secrets.randbelow(1000) if tiebreak is None else tiebreak
    return (_EPOCH_MS_LIMIT - started_ms) * 1000 + tie


def takeover_bound(lifetime: int = DEFAULT_PEERING_LIFETIME) -> float:
    """The longest a standby waits after the active replica was killed before it resumes:
    the dead peer's remaining lifetime (at most `lifetime`, if it died right after a keepalive)."""
    return float(lifetime)


def _alive(peer: Mapping[str, Any], now: dt.datetime) -> bool:
    try:
        seen = dt.datetime.fromisoformat(str(peer["lastseen"]))
        lifetime = dt.timedelta(seconds=int(peer.get("lifetime", 0)))
    except (KeyError, TypeError, ValueError):
        return False
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=dt.UTC)
    return seen + lifetime >= now


def is_active(peering_status: Mapping[str, Any] | None, priority: int, now: dt.datetime | None = None) -> bool:
    """Whether the replica of `priority` is the active one, from the peering object's status as Kopf
    writes it ({identity: {priority, lifetime, lastseen}}): it is registered and no live peer has a
    higher priority. Kopf runs the handlers, and so keeps the indexes current, of that replica only."""
    now = now or dt.datetime.now(dt.UTC)
    live = [int(p.get("priority", 0)) for p in (peering_status or {}).values()
            if isinstance(p, Mapping) and _alive(p, now)]
    return priority in live and max(live) == priority


class ActiveCheck:
    """`is_active` for this replica, reading the peering object at most once per `ttl` seconds.
    The admission webhooks run on every replica; a standby's Kopf indexes are paused with its
    handlers, so its webhooks ask the API instead (controller.admission)."""

    def __init__(self, read: Callable[[], Mapping[str, Any] | None], priority: int, ttl: float = 1.0) -> None:
        self.read, self.priority, self.ttl = read, priority, ttl
        self._at, self._active = -float("inf"), False
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    body = self.read()
                    self._active = is_active((body or {}).get("status"), self.priority)
                except Exception:  # the API unreachable: assume the worst (ask the API, not the indexes)
                    self._active = False
                self._at = time.monotonic()
            return self._active


def peer_entry(priority: int, lifetime: int, now: dt.datetime | None = None) -> dict[str, Any]:
    """This replica's entry in the peering object's status, as Kopf's own keep-alive writes it."""
    return {"priority": int(priority), "lifetime": int(lifetime),
            "lastseen": (now or dt.datetime.now(dt.UTC)).isoformat()}


class KeepAlive:
    """Renews this replica's peering entry from a thread of its own, next to Kopf's keep-alive.

    Kopf renews the entry from the event loop that also parses every watch event and runs the
    async handlers. Under a burst (the scale benchmark at 5,000 VMs, both cores saturated) the
    renewal came more than the 10 s lifetime late: the standby took the active replica for dead
    and resumed, and both acted until the next renewal landed, a few seconds each time, during which
    the standby listed everything (its memory grew by ~200 MiB) and both placed the same VMs. This
    thread needs only a few milliseconds every `interval` seconds, so a busy loop no longer makes a
    live replica look dead. It renews only while the event loop still runs: `tick()`, called by a
    task on the loop every second, must have run within half the lifetime, so a replica whose loop is
    stuck (a deadlock, a handler blocking it) stops renewing and the standby takes over as before."""

    def __init__(self, patch: Callable[[dict[str, Any]], Any], identity: str, priority: int,
                 lifetime: int = DEFAULT_PEERING_LIFETIME, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.patch, self.identity, self.priority, self.lifetime = patch, identity, priority, lifetime
        self.interval = interval if interval is not None else max(1.0, lifetime / 4)
        self.clock = clock
        self.loop_seen = clock()
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        self.loop_seen = self.clock()

    def loop_alive(self) -> bool:
        return self.clock() - self.loop_seen <= self.lifetime / 2

    def renew(self) -> bool:
        """One renewal, unless the loop is stuck or the keep-alive was stopped; whether it was sent."""
        if self.stopped.is_set() or not self.loop_alive():
            return False
        self.patch({"status": {self.identity: peer_entry(self.priority, self.lifetime)}})
        return True

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.renew()
            except Exception as exc:  # the API unreachable: Kopf's own keep-alive tries as well
                log.debug("peering keep-alive failed: %s", exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="peering-keepalive", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing, and remove the entry: Kopf removes it when its own keep-alive stops, which
        on a clean exit comes before the cleanup handlers (that call this), so a renewal of this
        thread in between would have put it back for a whole lifetime and held the standby."""
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.patch({"status": {self.identity: None}})


def own_identity(environ: Mapping[str, str]) -> str:
    """This replica's peering identity: $POD_ID (the chart sets it to the pod's name; Kopf uses the
    same variable), else one made like Kopf's own (user@host/start time/random)."""
    pod = environ.get("POD_ID")
    if pod:
        return pod
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    return f"{getpass.getuser()}@{socket.gethostname()}/{stamp}/{secrets.token_hex(2)}"
