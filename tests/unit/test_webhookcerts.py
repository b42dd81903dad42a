"""The webhook's certificate rotates without a restart (issue #14): CertReloader loads renewed
files into the live SSL context, so the next TLS handshake on the same listening socket gets
the new certificate; a half-written pair keeps the old one in service."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from cryptography import x509

from failovervm import webhookcerts


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


async def served_serial(port: int, ca: Path) -> int:
    client = ssl.create_default_context(cafile=str(ca))
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der).serial_number


def test_a_reissued_certificate_is_served_on_the_same_socket(tmp_path: Path) -> None:
    ca, crt, key = webhookcerts.ensure(tmp_path, "127.0.0.1")
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    reloader = webhookcerts.CertReloader(context, str(crt), str(key))

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            first = serial_of(crt.read_bytes())
            assert await served_serial(port, ca) == first
            assert not reloader.check()  # nothing changed

            webhookcerts.reissue(tmp_path, "127.0.0.1")
            second = serial_of(crt.read_bytes())
            assert second != first
            assert await served_serial(port, ca) == first  # not yet looked at
            assert reloader.check()
            assert await served_serial(port, ca) == second  # same server, same socket

            # Half-written: a new certificate whose key is not there yet keeps the old pair in service.
            old_key = key.read_bytes()
            webhookcerts.reissue(tmp_path, "127.0.0.1")
            new_key = key.read_bytes()
            key.write_bytes(old_key)
            assert not reloader.check()
            assert await served_serial(port, ca) == second
            key.write_bytes(new_key)
            assert reloader.check()
            assert await served_serial(port, ca) == serial_of(crt.read_bytes())
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
