"""Which sandbox owns a fabric bridge and a block of loopback addresses on this machine.

Two sandboxes with the same `--bridge` or `--address-base` would share (and tear down) each
other's node bridges and libvirtd addresses: the second `up` would fail on an address in use, and
its `down` would then remove the first one's bridges under its running guests. So `up` records its
state dir as the owner of both in a small file, refuses to start while another live sandbox owns
either, and `down` removes bridges only its own sandbox owns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from failovervm_sandbox import SandboxError, procs


def run_dir() -> Path:
    return Path(os.environ.get("FAILOVERVM_SANDBOX_RUN_DIR", "/run/failovervm-sandbox"))


def _files(bridge: str, address_base: str) -> list[tuple[Path, str]]:
    return [(run_dir() / f"bridge-{bridge}", f"bridge {bridge}"),
            (run_dir() / f"addresses-{address_base}", f"addresses from {address_base}")]


def _alive(state_dir: Path) -> bool:
    """Whether the sandbox in `state_dir` still runs (its etcd is up)."""
    try:
        data = json.loads((state_dir / "sandbox.json").read_text())
    except (OSError, ValueError):
        return False
    return procs.alive((data.get("etcd") or {}).get("pid"), "etcd")


def _owner(path: Path) -> Path | None:
    try:
        return Path(path.read_text().strip())
    except OSError:
        return None


def claim(state_dir: Path, bridge: str, address_base: str) -> None:
    """Record `state_dir` as the owner of `bridge` and `address_base`; SandboxError if another
    running sandbox owns either."""
    files = _files(bridge, address_base)
    for path, what in files:
        other = _owner(path)
        if other is not None and other != state_dir and _alive(other):
            raise SandboxError(
                f"{what} belong to the running sandbox in {other}: stop it first "
                f"(`failovervm sandbox down --state-dir {other}`) or give this one its own "
                "--bridge and --address-base")
    run_dir().mkdir(parents=True, exist_ok=True)
    for path, _ in files:
        path.write_text(str(state_dir))


def owns_bridge(state_dir: Path, bridge: str) -> bool:
    """Whether `down` of `state_dir` may remove `bridge`'s node bridges: no other live sandbox owns it."""
    other = _owner(run_dir() / f"bridge-{bridge}")
    return other is None or other == state_dir or not _alive(other)


def release(state_dir: Path, bridge: str, address_base: str) -> None:
    for path, _ in _files(bridge, address_base):
        if _owner(path) == state_dir:
            path.unlink(missing_ok=True)
