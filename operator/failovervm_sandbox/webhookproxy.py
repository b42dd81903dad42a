"""The sandbox's stand-in for the controller's webhook Service: one TCP port that the
ValidatingWebhookConfiguration names, forwarded to every controller replica's own port (read from
a file for each connection; the first backend that accepts, starting at a rotating one). A
replica that is down (killed, restarting) is skipped, as a Service's endpoints drop a pod that is
not ready. TLS passes through untouched: the replicas serve the webhook certificate themselves.

`python -m failovervm_sandbox.webhookproxy --listen PORT --backends FILE` (FILE: one port a line)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
from pathlib import Path

HOST = "127.0.0.1"


def backends(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split() if line.strip()]
    except (OSError, ValueError):
        return []


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def serve(listen: int, backends_file: Path) -> None:
    turn = itertools.count()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        ports = backends(backends_file)
        start = next(turn) % max(1, len(ports))
        for port in ports[start:] + ports[:start]:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
            except (OSError, TimeoutError):
                continue
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
            return
        client_w.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, listen)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--backends", type=Path, required=True)
    a = ap.parse_args()
    serve(a.listen, a.backends)
