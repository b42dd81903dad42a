"""Self-signed serving certificates for the controller's admission webhook (when no cert-manager
or Helm-generated Secret provides them)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from failovervm import pki


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def ensure(cert_dir: Path, host: str) -> tuple[Path, Path, Path]:
    """ca.crt, tls.crt and tls.key in `cert_dir`, generated once for `host` (name or IP)."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    ca, crt, key = cert_dir / "ca.crt", cert_dir / "tls.crt", cert_dir / "tls.key"
    if not (ca.exists() and crt.exists() and key.exists()):
        ca_pair = pki.make_ca(cert_dir, "ca", "failovervm-webhook-ca")
        leaf = pki.issue(ca_pair, cert_dir, "webhook", host, server=True,
                         ip_addresses=(host,) if _is_ip(host) else (),
                         dns_names=() if _is_ip(host) else (host,))
        leaf.cert.replace(crt)
        leaf.key.replace(key)
    return ca, crt, key
