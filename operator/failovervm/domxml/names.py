"""Names, aliases and XML namespaces shared by the domain XML builders."""

from __future__ import annotations

import re
from typing import Final

#: Longest FailoverVM name accepted. The name ends up in the libvirt domain name,
#: in labels and in the guest hostname, so it is held to a DNS label's length
#: even though Kubernetes object names may be DNS subdomains of up to 253 characters.
MAX_VM_NAME_LEN: Final = 63
#: Longest Kubernetes namespace name (namespaces are DNS labels).
MAX_NAMESPACE_LEN: Final = 63

DOMAIN_NAME_PREFIX: Final = "fvm"
#: Separator between prefix, namespace and name. It cannot occur in a Kubernetes
#: namespace or object name, so a domain name maps back to exactly one VM.
DOMAIN_NAME_SEP: Final = "_"

#: libvirt keeps user-supplied device aliases only when they start with "ua-".
USER_ALIAS_PREFIX: Final = "ua-"
#: Alias of the virtio NIC, the persistent (standby) member of the failover team.
STANDBY_ALIAS: Final = "ua-fvm-standby"
#: Alias of the VF NIC, the transient (primary) member of the failover team.
VF_ALIAS: Final = "ua-fvm-vf"
#: Prefix of the alias given to each disk; the disk's name follows it.
DISK_ALIAS_PREFIX: Final = "ua-fvm-disk-"

#: Namespace of the operator's element inside the domain's <metadata>.
METADATA_NS: Final = "https://failovervm.io/xmlns/domain/v1alpha1"
METADATA_PREFIX: Final = "fvm"

_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def validate_dns_label(value: str, what: str = "name", max_len: int = 63) -> str:
    """Return ``value`` if it is an RFC 1123 DNS label of at most ``max_len`` characters."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise ValueError(f"{what} {value!r} is {len(value)} characters long; the limit is {max_len}")
    if not _DNS_LABEL_RE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS label: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def validate_dns_subdomain(value: str, what: str = "name", max_len: int = 253) -> str:
    """Return ``value`` if it is an RFC 1123 DNS subdomain of at most ``max_len`` characters."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise ValueError(f"{what} {value!r} is {len(value)} characters long; the limit is {max_len}")
    if not _DNS_SUBDOMAIN_RE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS subdomain: use lowercase letters, digits, '-' and '.', "
            "each dot-separated part starting and ending with a letter or digit"
        )
    return value


def domain_name(namespace: str, name: str) -> str:
    """Return the libvirt domain name of FailoverVM ``namespace/name``: ``fvm_<namespace>_<name>``."""
    validate_dns_label(namespace, "namespace", MAX_NAMESPACE_LEN)
    validate_dns_subdomain(name, "VM name", MAX_VM_NAME_LEN)
    return DOMAIN_NAME_SEP.join((DOMAIN_NAME_PREFIX, namespace, name))


def parse_domain_name(dom_name: str) -> tuple[str, str] | None:
    """Return ``(namespace, name)`` for a name made by :func:`domain_name`, else ``None``."""
    parts = dom_name.split(DOMAIN_NAME_SEP)
    if len(parts) != 3 or parts[0] != DOMAIN_NAME_PREFIX:
        return None
    try:
        validate_dns_label(parts[1], "namespace", MAX_NAMESPACE_LEN)
        validate_dns_subdomain(parts[2], "VM name", MAX_VM_NAME_LEN)
    except ValueError:
        return None
    return parts[1], parts[2]


def disk_alias(disk_name: str) -> str:
    """Return the user alias of the disk called ``disk_name``."""
    return DISK_ALIAS_PREFIX + disk_name
