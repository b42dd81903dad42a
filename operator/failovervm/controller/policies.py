"""Where the controller reads FailoverMigrationPolicies and namespace labels from when a migration
starts: Kopf's in-memory indexes over watches of both (controller.main binds them), never a LIST
per migration. Which policy applies and what it resolves to is failovervm.migrationpolicy."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from failovervm import migrationpolicy as mp
from failovervm.quantity import parse_quantity

Obj = Mapping[str, Any]
ALL = "all"  # the one key of the policy index


class PolicySource(Protocol):
    def policies(self) -> Iterable[Obj]: ...
    def namespace_labels(self, namespace: str) -> Mapping[str, str]: ...


@dataclass
class StaticPolicies:
    """A PolicySource over fixed data: before Kopf's indexes are bound (no policies: the built-in
    defaults), and in tests."""

    items: list[Obj] = field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)

    def policies(self) -> Iterable[Obj]:
        return list(self.items)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self.namespaces.get(namespace, {})


class IndexedPolicies:
    """A PolicySource over Kopf's indexes: `{ALL: {policy summaries}}` and `{namespace: {labels}}`."""

    def __init__(self, policies: Mapping[str, Collection[Obj]],
                 namespaces: Mapping[str, Collection[Mapping[str, str]]]) -> None:
        self._policies = policies
        self._namespaces = namespaces

    def policies(self) -> Iterable[Obj]:
        return list(self._policies.get(ALL, ()))

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        for labels in self._namespaces.get(namespace, ()):
            return labels
        return {}


def summary(name: str, spec: Mapping[str, Any], deleting: bool) -> dict[str, Any]:
    """What the index keeps of a policy (what select_policy and effective_policy read)."""
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "set"
    return {"metadata": meta, "spec": dict(spec)}


def for_migration(source: PolicySource, vm: Obj, migration: Obj) -> mp.EffectivePolicy:
    """The effective policy of a migration of `vm` starting now."""
    meta = vm.get("metadata") or {}
    chosen = mp.select_policy(source.policies(), source.namespace_labels(str(meta.get("namespace") or "")),
                              meta.get("labels") or {})
    try:
        memory = parse_quantity((vm.get("spec") or {}).get("memory") or 0)
    except ValueError:
        memory = 0
    return mp.effective_policy(chosen, memory, migration.get("spec") or {})
