"""High availability of the controller: which replica is active.

Kopf's peering runs the handlers of exactly one replica: the live peer with the highest priority;
every other replica pauses its watches (and so its handlers, timers and indexes) and keeps serving
the admission webhooks. Two replicas with the same priority both pause, so every replica needs its
own. The oldest replica wins here: a replica that starts later (a rolling update, a rescheduled
pod) never preempts the active one, it waits until that one is gone.

A replica killed with SIGKILL leaves its peering entry behind until the entry's lifetime ends:
the standby sleeps until then and takes over (Kopf's own re-evaluation at the peer's deadline), so
the lifetime bounds the takeover. A replica that stops cleanly removes its entry at once.

A replica that is alive but cannot renew its entry (the API server unreachable from it, its event
loop stuck) must not go on acting once the standby may have taken over: the active replica stands
down (exits, and is restarted as a standby) when it renewed nothing for the renew deadline, a few
seconds before the lifetime ends (KeepAlive; client-go's leader election does the same)."""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from failovervm import failpoints

log = logging.getLogger(__name__)

# Seconds a replica's peering entry stays valid without a keepalive. Kopf refreshes it every
# max(1, lifetime - 5..10) seconds, so 10 s means a keepalive every 1-5 s (one small PATCH of the
# ClusterKopfPeering per replica) and a takeover at most ~10 s after the active replica died.
DEFAULT_PEERING_LIFETIME = 10
# The shortest lifetime that leaves a renew deadline (below) with a renewal or two before it.
MIN_PEERING_LIFETIME = 6

# How long before its entry's lifetime ends the active replica stands down when it could not renew
# it: the standby resumes at the entry's lastseen + lifetime on its own clock, so this covers the
# watchdog's period, the exit itself and some clock skew between the two.
STAND_DOWN_MARGIN = 3.0
# The exit status of a replica that stood down (the kubelet restarts it; it comes back as a standby).
STAND_DOWN_EXIT = 75  # EX_TEMPFAIL

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


def renew_deadline(lifetime: int = DEFAULT_PEERING_LIFETIME) -> float:
    """Seconds without a renewal after which the active replica stands down (at least 1)."""
    return max(1.0, lifetime - STAND_DOWN_MARGIN)


def _exit_now(reason: str) -> None:
    """Stand down: stop acting at once. Nothing more is written (the API may be out of reach, and a
    cleanup would act after the deadline); the entry expires by itself. Every step is safe to
    interrupt (kill -9 at any point: docs/reliability.md), and the kubelet restarts the container."""
    log.critical("standing down: %s; exiting with status %d so that this replica restarts as a standby",
                 reason, STAND_DOWN_EXIT)
    logging.shutdown()
    os._exit(STAND_DOWN_EXIT)


class KeepAlive:
    """Renews this replica's peering entry from a thread of its own, next to Kopf's keep-alive, and
    makes the active replica stand down when it cannot.

    Kopf renews the entry from the event loop that also parses every watch event and runs the
    async handlers. Under a burst (the scale benchmark at 5,000 VMs, both cores saturated) the
    renewal came more than the 10 s lifetime late: the standby took the active replica for dead
    and resumed, and both acted until the next renewal landed, a few seconds each time, during which
    the standby listed everything (its memory grew by ~200 MiB) and both placed the same VMs. This
    thread needs only a few milliseconds every `interval` seconds, so a busy loop no longer makes a
    live replica look dead. It renews only while the event loop still runs: `tick()`, called by a
    task on the loop every second, must have run within half the lifetime, so a replica whose loop is
    stuck (a deadlock, a handler blocking it) stops renewing and the standby takes over as before.

    Renew deadline: each renewal's answer is the peering object, which says whether this replica is
    the active one (`is_active`). When the last renewal that got through said so and none got
    through for `deadline` seconds since (its entry's lastseen), the standby may resume at the end of
    the lifetime: a watchdog thread calls `stand_down` before that (by default: log and exit), so a
    replica cut off from the API server, or whose loop is stuck and later comes back, never acts
    next to the one that took over. A standby that cannot renew does nothing: it is not acting."""

    def __init__(self, patch: Callable[[dict[str, Any]], Any], identity: str, priority: int,
                 lifetime: int = DEFAULT_PEERING_LIFETIME, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, deadline: float | None = None,
                 stand_down: Callable[[str], None] = _exit_now) -> None:
        self.patch, self.identity, self.priority, self.lifetime = patch, identity, priority, lifetime
        self.interval = interval if interval is not None else max(1.0, lifetime / 4)
        self.deadline = deadline if deadline is not None else renew_deadline(lifetime)
        self.clock, self.stand_down = clock, stand_down
        self.loop_seen = clock()
        self.renewed = clock()  # when the entry of the last renewal that got through was stamped
        self.active = False  # what that renewal's answer said
        self.stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def tick(self) -> None:
        self.loop_seen = self.clock()

    def loop_alive(self) -> bool:
        return self.clock() - self.loop_seen <= self.lifetime / 2

    def renew(self) -> bool:
        """One renewal, unless the loop is stuck or the keep-alive was stopped; whether it was sent.
        Raises what the API call raised (the renewal did not get through)."""
        if self.stopped.is_set() or not self.loop_alive():
            return False
        stamped = self.clock()
        if self.active:
            failpoints.hit("ha.renew.active")
        answer = self.patch({"status": {self.identity: peer_entry(self.priority, self.lifetime)}})
        self.renewed = stamped
        if isinstance(answer, Mapping):
            self.active = is_active(answer.get("status"), self.priority)
        return True

    def overdue(self) -> str | None:
        """Why this replica must stand down now, or None."""
        if self.stopped.is_set() or not self.active:
            return None
        late = self.clock() - self.renewed
        if late <= self.deadline:
            return None
        stuck = "" if self.loop_alive() else " (its event loop is stuck)"
        return (f"the active replica {self.identity} could not renew its peering entry for {late:.1f} s"
                f"{stuck}, past the {self.deadline:g} s renew deadline of a {self.lifetime} s lifetime: "
                "the standby may take over")

    def check(self) -> bool:
        """Stand down if overdue (once); whether it did."""
        reason = self.overdue()
        if reason is None:
            return False
        self.stopped.set()
        self.stand_down(reason)
        return True

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.renew()
            except Exception as exc:  # the API unreachable: Kopf's own keep-alive tries as well
                log.warning("peering keep-alive failed (%.1f s since the last renewal): %s",
                            self.clock() - self.renewed, exc)

    def _watch(self) -> None:
        # Apart from the renewals: one of them may hang in the API call well past the deadline.
        while not self.stopped.wait(min(0.5, self.deadline / 4)):
            if self.check():
                return

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name="peering-keepalive", daemon=True),
                         threading.Thread(target=self._watch, name="peering-watchdog", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop renewing, and remove the entry: Kopf removes it when its own keep-alive stops, which
        on a clean exit comes before the cleanup handlers (that call this), so a renewal of this
        thread in between would have put it back for a whole lifetime and held the standby."""
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.patch({"status": {self.identity: None}})


def own_identity(environ: Mapping[str, str]) -> str:
    """This replica's peering identity: $POD_ID (the chart sets it to the pod's name; Kopf uses the
    same variable), else one made like Kopf's own (user@host/start time/random)."""
    pod = environ.get("POD_ID")
    if pod:
        return pod
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    return f"{getpass.getuser()}@{socket.gethostname()}/{stamp}/{secrets.token_hex(2)}"
