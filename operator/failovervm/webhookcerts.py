"""Serving certificates of the controller's admission webhook: self-signed ones when no
cert-manager or Helm-generated Secret provides them, and their rotation without a restart
(CertReloader: the mounted files are watched and loaded into the live SSL context, so every new
TLS handshake gets the current certificate and no request ever finds the port closed)."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import ssl
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


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
        from failovervm import pki  # cryptography costs ~8 MiB: only when a certificate is made

        pki.make_ca(cert_dir, "ca", "failovervm-webhook-ca")
        reissue(cert_dir, host)
    return ca, crt, key


def reissue(cert_dir: Path, host: str) -> None:
    """A new serving certificate and key from the CA in `cert_dir` (what cert-manager does on
    renewal; the sandbox and the e2e tests use it to prove rotation without a restart)."""
    from failovervm import pki

    leaf = pki.issue(pki.KeyPair(cert_dir / "ca.crt", cert_dir / "ca.key"), cert_dir, "webhook", host, server=True,
                     ip_addresses=(host,) if _is_ip(host) else (), dns_names=() if _is_ip(host) else (host,))
    leaf.key.replace(cert_dir / "tls.key")
    leaf.cert.replace(cert_dir / "tls.crt")


class CertReloader:
    """Loads `certfile`/`keyfile` into `context` again whenever their content changes. A pair that
    does not load (a key that does not match its certificate in the middle of an update, a file
    missing) keeps the previous certificate in service and is tried again at the next check."""

    def __init__(self, context: ssl.SSLContext, certfile: str, keyfile: str) -> None:
        self.context, self.certfile, self.keyfile = context, certfile, keyfile
        self.loaded = self._digest()

    def _read(self) -> tuple[bytes, bytes] | None:
        try:
            return Path(self.certfile).read_bytes(), Path(self.keyfile).read_bytes()
        except OSError:
            return None

    def _digest(self, pair: tuple[bytes, bytes] | None = None) -> str | None:
        pair = pair or self._read()
        return hashlib.sha256(pair[0] + b"\0" + pair[1]).hexdigest() if pair else None

    def check(self) -> bool:
        """Reload when the files changed; True when a new certificate is now served. The pair is
        read once, proven in a scratch context, and only then loaded into the live one (OpenSSL
        would keep a new certificate with the old key after a failed load: every handshake fails)."""
        pair = self._read()
        digest = self._digest(pair)
        if pair is None or digest == self.loaded:
            return False
        with tempfile.TemporaryDirectory(prefix="fvm-webhook-cert-") as tmp:
            crt, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            crt.write_bytes(pair[0])
            key.touch(mode=0o600)
            key.write_bytes(pair[1])
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(crt, key)
            except (ssl.SSLError, OSError) as exc:
                log.warning("webhook certificate %s changed but does not load (%s); still serving the previous one",
                            self.certfile, exc)
                return False
            self.context.load_cert_chain(crt, key)
        self.loaded = digest
        log.info("webhook certificate %s reloaded; new connections get it", self.certfile)
        return True

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
