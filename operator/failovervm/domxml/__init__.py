"""Libvirt domain XML for FailoverVMs, built with lxml only (never by string formatting).

``build_domain(spec)`` turns a validated :class:`DomainSpec` into a ``<domain>``
with a virtio standby NIC and, optionally, the SR-IOV VF as its failover partner.

The names, MACs and specs are plain Python; the XML builders and parsers load lxml, and are
imported on first use (PEP 562): the controller validates specs and derives domain names but
never builds XML, and lxml costs every process that imports it about 4 MiB.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .mac import generate_mac, normalize_mac, validate_mac
from .names import (
    MAX_VM_NAME_LEN,
    METADATA_NS,
    METADATA_PREFIX,
    STANDBY_ALIAS,
    VF_ALIAS,
    domain_name,
    parse_domain_name,
)
from .spec import BackingSpec, DiskSpec, DomainSpec, PCIAddress, StandbySpec

if TYPE_CHECKING:
    from .builder import build_domain, build_vf_interface_xml, check_teaming
    from .devices.metadata import OwnerRef, build_metadata, build_owner_element, parse_owner
    from .xmlutil import parse_xml, to_xml

# Names that need lxml, and the submodule each comes from.
_LAZY = {
    "build_domain": ".builder", "build_vf_interface_xml": ".builder", "check_teaming": ".builder",
    "OwnerRef": ".devices.metadata", "build_metadata": ".devices.metadata",
    "build_owner_element": ".devices.metadata", "parse_owner": ".devices.metadata",
    "parse_xml": ".xmlutil", "to_xml": ".xmlutil",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_VM_NAME_LEN",
    "METADATA_NS",
    "METADATA_PREFIX",
    "STANDBY_ALIAS",
    "VF_ALIAS",
    "BackingSpec",
    "DiskSpec",
    "DomainSpec",
    "OwnerRef",
    "PCIAddress",
    "StandbySpec",
    "build_domain",
    "build_metadata",
    "build_owner_element",
    "build_vf_interface_xml",
    "check_teaming",
    "domain_name",
    "generate_mac",
    "normalize_mac",
    "parse_domain_name",
    "parse_owner",
    "parse_xml",
    "to_xml",
    "validate_mac",
]
