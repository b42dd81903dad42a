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

import secrets
import time

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
