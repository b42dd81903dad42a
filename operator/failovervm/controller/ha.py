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
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

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
