"""Multi-tenant rules (issue #14, docs/security.md), pure: no I/O.

- which namespaces may use a VFPool (its ``spec.namespaceSelector``, a metav1.LabelSelector);
- the MAC addresses a pool hands out (``spec.macRange``): explicit ones must lie in it, generated
  ones are drawn from it;
- where an agent may live-migrate a domain to (the target node's libvirt URI);
- which migrations count against the capacity reserved for evacuations.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from failovervm import domxml
from failovervm.errors import FailoverVMError

__all__ = [
    "DestinationRefused",
    "MacRange",
    "check_destination",
    "mac_range",
    "pool_refusals",
    "selector_matches",
]


# -- pools per namespace -------------------------------------------------------------------------
def _expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False  # an operator the API server would not have admitted: match nothing


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: matchLabels and matchExpressions all hold; an empty
    selector matches everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


@dataclass(frozen=True)
class MacRange:
    """An inclusive range of MAC addresses, as 48-bit integers."""

    first: int
    last: int

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> MacRange:
        first = int(domxml.validate_mac(str(spec.get("first", ""))).replace(":", ""), 16)
        last = int(domxml.validate_mac(str(spec.get("last", ""))).replace(":", ""), 16)
        if last < first:
            raise ValueError(f"macRange: last {spec.get('last')} is below first {spec.get('first')}")
        return cls(first, last)

    def __contains__(self, mac: object) -> bool:
        return isinstance(mac, str) and self.first <= int(domxml.normalize_mac(mac).replace(":", ""), 16) <= self.last

    def __str__(self) -> str:
        return f"{_mac(self.first)}-{_mac(self.last)}"

    def generate(self, seed: str) -> str:
        """A stable MAC in the range from ``seed`` (the VM's UID), never a multicast address (the
        next unicast one instead; ``first`` is unicast, the CRD and parse see to it)."""
        n = int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:8], "big")
        candidate = self.first + n % (self.last - self.first + 1)
        if (candidate >> 40) & 1:  # the multicast bit of the first octet: go to the next octet
            candidate = ((candidate >> 40) + 1) << 40
            if candidate > self.last:
                candidate = self.first
        return _mac(candidate)


def _mac(value: int) -> str:
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def mac_range(pool: Mapping[str, Any] | None) -> MacRange | None:
    """The pool's spec.macRange (None: any locally administered or explicit unicast MAC)."""
    spec = ((pool or {}).get("spec") or {}).get("macRange")
    if not spec:
        return None
    try:
        return MacRange.parse(spec)
    except ValueError:
        return None  # the CRD schema validates its shape; a bad range restricts nothing rather than crash


def pool_refusals(vm: Mapping[str, Any], pool: Mapping[str, Any] | None,
                  namespace_labels: Mapping[str, str] | None) -> list[str]:
    """Why the VM's namespace may not use its pool (spec.namespaceSelector) or its explicit MAC is
    outside what the pool hands out (spec.macRange); every message names the field."""
    if pool is None:
        return []
    errors: list[str] = []
    namespace = (vm.get("metadata") or {}).get("namespace") or ""
    pool_name = pool["metadata"]["name"]
    selector = (pool.get("spec") or {}).get("namespaceSelector")
    if selector is not None and not selector_matches(selector, namespace_labels or {}):
        errors.append(f"spec.network.pool: VFPool {pool_name!r} may not be used from namespace {namespace!r} "
                      "(its spec.namespaceSelector does not select it)")
    mac = ((vm.get("spec") or {}).get("network") or {}).get("mac")
    rng = mac_range(pool)
    if mac and rng is not None:
        try:
            inside = mac in rng
        except ValueError:
            inside = True  # malformed: validate_vm reports it
        if not inside:
            errors.append(f"spec.network.mac: {mac} is outside the MAC range {rng} of VFPool {pool_name!r} "
                          "(spec.macRange)")
    return errors


# -- migration destinations ----------------------------------------------------------------------
class DestinationRefused(FailoverVMError, ValueError):
    """A node's announced libvirt URI is not one an agent may migrate to."""


def _node_hosts(node: Mapping[str, Any]) -> set[str]:
    hosts = {str(node.get("metadata", {}).get("name", "")).lower()}
    for addr in (node.get("status") or {}).get("addresses") or []:
        if addr.get("address"):
            hosts.add(str(addr["address"]).lower())
    hosts.discard("")
    return hosts


def _same_host(host: str, hosts: set[str]) -> bool:
    if host in hosts:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    for h in hosts:
        try:
            if ipaddress.ip_address(h) == ip:
                return True
        except ValueError:
            continue
    return False


def check_destination(uri: str, node: Mapping[str, Any], *, allow_tcp: bool) -> str:
    """``uri`` if an agent may open it and migrate a domain there: ``qemu+tls://HOST[:PORT]/system``
    (``qemu+tcp://`` only with ``allow_tcp``), no user, query or fragment, and HOST one of the
    node's names or addresses (metadata.name, status.addresses). Raises DestinationRefused."""
    node_name = node.get("metadata", {}).get("name", "?")
    allowed: Sequence[str] = ("qemu+tls", "qemu+tcp") if allow_tcp else ("qemu+tls",)
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        _ = parts.port  # a malformed port raises here
    except ValueError as exc:
        raise DestinationRefused(f"node {node_name}'s libvirt URI {uri!r} is malformed: {exc}") from None
    if parts.scheme not in allowed:
        raise DestinationRefused(
            f"node {node_name}'s libvirt URI {uri!r}: scheme {parts.scheme or '(none)'!r} is not allowed (only "
            f"{' and '.join(s + '://' for s in allowed)}; qemu+tcp:// needs the agent's --allow-tcp-migration)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise DestinationRefused(f"node {node_name}'s libvirt URI {uri!r}: no user, query parameters or fragment "
                                 "are allowed")
    if parts.path not in ("/system", ""):
        raise DestinationRefused(f"node {node_name}'s libvirt URI {uri!r}: only the /system driver is allowed")
    if not host or not _same_host(host.lower(), _node_hosts(node)):
        raise DestinationRefused(f"node {node_name}'s libvirt URI {uri!r}: host {host!r} is not one of the node's "
                                 "names or addresses (metadata.name, status.addresses)")
    return uri
