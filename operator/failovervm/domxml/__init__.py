"""Libvirt domain XML for FailoverVMs, built with lxml only (never by string formatting).

``build_domain(spec)`` turns a validated :class:`DomainSpec` into a ``<domain>``
with a virtio standby NIC and, optionally, the SR-IOV VF as its failover partner.
"""

from .builder import build_domain, build_vf_interface_xml, check_teaming
from .devices.metadata import OwnerRef, build_metadata, build_owner_element, parse_owner
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
from .xmlutil import parse_xml, to_xml

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
