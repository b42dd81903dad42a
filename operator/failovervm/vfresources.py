"""The extended resources `vf.failovervm.io/<pool>` a node advertises in its status (pure logic).

Each VFPool that selects a node is one extended resource there; its value is the number of the
pool's VFs on the node, all of them: kube-scheduler subtracts the requests of the pods bound to the
node itself. The node's agent owns every key under `vf.failovervm.io/` in the Node's
`status.capacity` and `status.allocatable`. It sets both (a kubelet derives allocatable from
capacity, but zeroes unknown extended resources when it re-registers a recreated node, and the
sandbox has no kubelet at all), and removes the keys of pools that no longer select the node.

`plan(status, counts)` compares what the Node says with what it should say and returns the merge
patch of nodes/status that fixes it (None when nothing differs) and the changes, for the log,
the Event and the metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from failovervm.labels import VF_RESOURCE_DOMAIN, vf_resource
from failovervm.quantity import parse_quantity_decimal

FIELDS = ("capacity", "allocatable")

# The name part of a qualified name (k8s.io/apimachinery IsQualifiedName), which an extended
# resource name's part after the "/" must be.
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def valid_pool_name(pool: str) -> bool:
    """Whether `vf.failovervm.io/<pool>` is a valid extended resource name. VFPools created before
    the CRD limited their names to 63 characters may be longer: those cannot be advertised."""
    return len(pool) <= 63 and _NAME_PART.fullmatch(pool) is not None


def is_vf_resource(name: str) -> bool:
    """A resource name in the domain the agent owns."""
    return name.startswith(f"{VF_RESOURCE_DOMAIN}/")


@dataclass(frozen=True)
class Change:
    """One resource whose advertised value changes in `fields` (capacity, allocatable). `old` is the
    value in capacity, else in allocatable (None: absent or not a whole number); `new` None removes it."""

    resource: str
    old: int | None
    new: int | None
    fields: tuple[str, ...] = FIELDS

    def __str__(self) -> str:
        was = "unset" if self.old is None else str(self.old)
        if self.new is None:
            return f"{self.resource} removed (was {was})"
        if self.old == self.new:
            return f"{self.resource}={self.new} (re-asserted in {' and '.join(self.fields)})"
        return f"{self.resource}={self.new} (was {was})"


@dataclass(frozen=True)
class Plan:
    """What to write to the Node: `patch` (None: the Node is right), the `changes` it makes,
    `desired` (resource -> VFs after it) and the `skipped` pools whose names are no resource name."""

    patch: dict[str, Any] | None
    changes: tuple[Change, ...] = ()
    desired: Mapping[str, int] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()


def desired(counts: Mapping[str, int]) -> tuple[dict[str, int], tuple[str, ...]]:
    """pool -> VFs on the node (the pools that select it) into resource name -> VFs, and the pools
    left out because their name cannot be part of a resource name."""
    want = {vf_resource(pool): max(int(n), 0) for pool, n in counts.items() if valid_pool_name(pool)}
    return want, tuple(sorted(p for p in counts if not valid_pool_name(p)))


def _value(raw: Any) -> Decimal | None:
    try:
        return parse_quantity_decimal(raw)
    except (TypeError, ValueError):
        return None


def advertised(status: Mapping[str, Any] | None) -> dict[str, dict[str, Decimal | None]]:
    """field (capacity, allocatable) -> the Node's `vf.failovervm.io/*` resources and their values
    (None: unparseable)."""
    status = status or {}
    return {f: {k: _value(v) for k, v in (status.get(f) or {}).items() if is_vf_resource(k)} for f in FIELDS}


def plan(status: Mapping[str, Any] | None, counts: Mapping[str, int]) -> Plan:
    """The merge patch of nodes/status that makes the Node advertise `counts` (pool -> VFs, for the
    pools that select the node) in capacity and allocatable, touching only `vf.failovervm.io/*` keys,
    and removing (null) those of other pools."""
    want, skipped = desired(counts)
    have = advertised(status)
    body: dict[str, dict[str, str | None]] = {}
    for f in FIELDS:
        edits: dict[str, str | None] = {}
        for name, n in want.items():
            if have[f].get(name) != Decimal(n):
                edits[name] = str(n)
        for name in have[f]:
            if name not in want:
                edits[name] = None
        if edits:
            body[f] = dict(sorted(edits.items()))
    if not body:
        return Plan(None, (), want, skipped)
    changes = []
    for name in sorted({k for edits in body.values() for k in edits}):
        old = have["capacity"].get(name)
        if old is None:
            old = have["allocatable"].get(name)
        fields = tuple(f for f in FIELDS if name in body.get(f, {}))
        whole = old is not None and old == old.to_integral_value()
        changes.append(Change(name, int(old) if old is not None and whole else None, want.get(name), fields))
    return Plan({"status": body}, tuple(changes), want, skipped)


def describe(changes: tuple[Change, ...] | list[Change]) -> str:
    """One line for the log and the Event: `vf.failovervm.io/a=4 (was 3), vf.failovervm.io/b removed (was 2)`."""
    return ", ".join(str(c) for c in changes)
