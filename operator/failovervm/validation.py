"""Admission checks that the CRD schema and CEL cannot express (they need cluster state or
operator configuration). Every message names the offending field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from failovervm import domxml
from failovervm.storage import PathNotAllowed, StoragePolicy
from failovervm.vmspec import guest_paths


def vm_macs(vm: Mapping[str, Any]) -> set[str]:
    out = set()
    spec_mac = ((vm.get("spec") or {}).get("network") or {}).get("mac")
    if spec_mac:
        try:
            out.add(domxml.normalize_mac(spec_mac))
        except ValueError:
            pass
    status_mac = (vm.get("status") or {}).get("mac")
    if status_mac:
        out.add(str(status_mac).lower())
    return out


def named_for(namespace: str, other_namespace: Any, other_name: Any) -> str:
    """Another FailoverVM as a user of `namespace` may see it: by name within the namespace only
    (tenancy: another tenant's VM names are not theirs to read)."""
    if other_namespace == namespace:
        return f"FailoverVM {other_namespace}/{other_name}"
    return "a FailoverVM of another namespace"


def validate_vm(
    vm: Mapping[str, Any],
    *,
    others: Iterable[Mapping[str, Any]],
    pool_exists: bool,
    storage: StoragePolicy,
) -> list[str]:
    errors: list[str] = []
    meta = vm.get("metadata") or {}
    spec = vm.get("spec") or {}
    name, namespace = meta.get("name") or "", meta.get("namespace") or ""
    try:
        domxml.domain_name(namespace, name)
    except ValueError as exc:
        errors.append(f"metadata.name: {exc}")
    network = spec.get("network") or {}
    pool = network.get("pool")
    if not pool:
        errors.append("spec.network.pool: required")
    elif not pool_exists:
        errors.append(f"spec.network.pool: VFPool {pool!r} does not exist")
    mac = network.get("mac")
    if mac:
        try:
            norm = domxml.validate_mac(mac)
        except ValueError as exc:
            errors.append(f"spec.network.mac: {exc}")
        else:
            uid = meta.get("uid")
            for other in others:
                om = other.get("metadata") or {}
                if ((other.get("spec") or {}).get("network") or {}).get("pool") != pool:
                    continue  # MACs are unique within a pool (one L2 segment), not across pools
                if uid and om.get("uid") == uid:
                    continue
                if (om.get("namespace"), om.get("name")) == (namespace, name):
                    continue
                if norm in vm_macs(other):
                    errors.append(f"spec.network.mac: {norm} is already used in VFPool {pool!r} by "
                                  + named_for(namespace, om.get("namespace"), om.get("name")))
                    break
    for field, path, write in guest_paths(vm):
        if ".." in path.split("/"):
            errors.append(f"{field}: {path!r} must not contain '..'")
            continue
        try:
            storage.confine(path, namespace, write=write)
        except PathNotAllowed as exc:
            errors.append(f"{field}: {exc}")
    return errors
