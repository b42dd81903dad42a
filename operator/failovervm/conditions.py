"""Kubernetes-style status conditions (metav1.Condition), as pure functions on dicts."""

from __future__ import annotations

import datetime as dt
from typing import Any


def now_iso(precise: bool = False) -> str:
    """RFC 3339 UTC time; `precise` keeps milliseconds (migration start/end, for overlap checks)."""
    now = dt.datetime.now(dt.UTC)
    if precise:
        return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return now.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def get(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    c = get(conditions, type_)
    return bool(c and c.get("status") == "True")


def status_text(status: bool | str) -> str:
    """A condition status as the API spells it: True/False for booleans, strings (Unknown) as given."""
    return status if isinstance(status, str) else ("True" if status else "False")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new list with condition `type_` set; lastTransitionTime only moves on a status change."""
    st = status_text(status)
    out = [dict(c) for c in conditions or []]
    existing = get(out, type_)
    if existing is None:
        existing = {"type": type_, "lastTransitionTime": now_iso()}
        out.append(existing)
    elif existing.get("status") != st:
        existing["lastTransitionTime"] = now_iso()
    existing.update({"status": st, "reason": reason, "message": message[:32768]})
    if observed_generation is not None:
        existing["observedGeneration"] = observed_generation
    return sorted(out, key=lambda c: str(c.get("type")))
