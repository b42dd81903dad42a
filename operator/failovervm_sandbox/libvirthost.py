"""One libvirtd + QEMU "host" per sandbox node.

Each libvirtd runs in its own mount namespace (``unshare -m``) with private
/run/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and /etc/libvirt
bind-mounted from the node's state directory, listens with plain TCP on its own
loopback address, and has its own host UUID so that libvirt accepts migrations
between two daemons on the same machine.

Plain TCP without authentication is for the loopback sandbox only; production
migration uses TLS (see docs/migration-transport.md).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from failovervm_sandbox import SandboxError, procs

PRIVATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt", "/etc/libvirt")
LIBVIRTD = "/usr/sbin/libvirtd"
_KVM_GET_API_VERSION = 0xAE00


def kvm_usable() -> tuple[bool, str]:
    """Whether /dev/kvm can be opened and answers KVM_GET_API_VERSION."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"/dev/kvm unusable: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as exc:
        return False, f"KVM_GET_API_VERSION failed: {exc.strerror}"
    finally:
        os.close(fd)
    return (version == 12), f"KVM API version {version}"


@dataclass(frozen=True)
class LibvirtHost:
    index: int
    address: str
    root: Path

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    def dir(self, private: str) -> Path:
        return self.root / private.strip("/").replace("/", "_")

    @property
    def pidfile(self) -> Path:
        return self.dir("/run/libvirt") / "libvirtd.pid"

    @property
    def log(self) -> Path:
        return self.dir("/var/log/libvirt") / "libvirtd.log"

    @property
    def qemu_run_dir(self) -> Path:
        return self.dir("/run/libvirt") / "qemu"

    def host_uuid(self) -> str:
        f = self.root / "host-uuid"
        if not f.exists():
            f.write_text(str(uuid.uuid4()))
        return f.read_text().strip()


def _render_conf(values: dict[str, str | int | list[str]], index: int) -> str:
    """Render libvirt's key = value config syntax (strings quoted, lists bracketed)."""
    lines = [f"# failovervm sandbox node {index} (generated)"]
    for key, value in values.items():
        if isinstance(value, int):
            rendered = str(value)
        elif isinstance(value, list):
            rendered = "[ " + ", ".join(f'"{v}"' for v in value) + " ]"
        else:
            rendered = f'"{value}"'
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def prepare(host: LibvirtHost) -> None:
    """Create the private directories and the daemon configuration (idempotent)."""
    for d in PRIVATE_DIRS:
        host.dir(d).mkdir(parents=True, exist_ok=True)
        Path(d).mkdir(parents=True, exist_ok=True)  # bind-mount targets must exist on the host
    for sub in ("qemu", "qemu/ram", "qemu/save", "qemu/dump", "qemu/snapshot", "qemu/checkpoint",
                "qemu/nvram", "images"):
        (host.dir("/var/lib/libvirt") / sub).mkdir(parents=True, exist_ok=True)
    (host.dir("/var/log/libvirt") / "qemu").mkdir(parents=True, exist_ok=True)
    etc = host.dir("/etc/libvirt")
    (etc / "qemu").mkdir(exist_ok=True)
    libvirtd_conf: dict[str, str | int | list[str]] = {
        "listen_tls": 0,
        "listen_tcp": 1,
        "listen_addr": host.address,
        "auth_tcp": "none",
        "auth_unix_rw": "none",
        "unix_sock_group": "root",
        "host_uuid": host.host_uuid(),
        "log_outputs": "3:file:/var/log/libvirt/libvirtd.log",
        "max_clients": 200,
        "max_workers": 40,
        "keepalive_interval": 5,
        "keepalive_count": 5,
    }
    qemu_conf: dict[str, str | int | list[str]] = {
        "user": "root",
        "group": "root",
        "dynamic_ownership": 0,
        "remember_owner": 0,
        "security_driver": "none",
        "stdio_handler": "file",
        "namespaces": [],
        "migration_address": host.address,
        "migration_host": host.address,
    }
    (etc / "libvirtd.conf").write_text(_render_conf(libvirtd_conf, host.index))
    (etc / "qemu.conf").write_text(_render_conf(qemu_conf, host.index))
    (etc / "libvirt.conf").write_text("# empty: clients name URIs explicitly\n")


def caps_cache() -> Path:
    """Machine-wide copy of libvirt's QEMU capabilities cache.

    Probing QEMU's capabilities takes libvirtd several seconds at first start; every
    node runs the same QEMU binary on the same host, so one probe's result seeds the
    others (libvirt revalidates the cache against the binary and host itself).
    """
    base = os.environ.get("FAILOVERVM_CACHE") or str(Path.home() / ".cache" / "failovervm")
    return Path(base) / "libvirt-qemu-capabilities"


def _seed_caps(host: LibvirtHost) -> None:
    target = host.dir("/var/cache/libvirt") / "qemu" / "capabilities"
    src = caps_cache()
    if src.is_dir() and any(src.glob("*.xml")) and not (target.exists() and any(target.glob("*.xml"))):
        target.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.xml"):
            shutil.copy2(f, target / f.name)


def save_caps(host: LibvirtHost) -> None:
    """Copy a started node's capabilities cache to the machine-wide cache, if that is empty."""
    src = host.dir("/var/cache/libvirt") / "qemu" / "capabilities"
    dst = caps_cache()
    if src.is_dir() and any(src.glob("*.xml")) and not any(dst.glob("*.xml")):
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.xml"):
            shutil.copy2(f, dst / f.name)


def start(host: LibvirtHost) -> int:
    """Start libvirtd and wait until it answers; returns its PID."""
    pid = launch(host)
    wait_ready(host, pid)
    save_caps(host)
    return pid


def launch(host: LibvirtHost) -> int:
    """Start libvirtd in a private mount namespace; returns its PID without waiting."""
    _seed_caps(host)
    if not os.path.exists(LIBVIRTD):
        raise SandboxError(f"{LIBVIRTD} not found: install libvirt-daemon and libvirt-daemon-driver-qemu")
    mounts = " && ".join(
        f"mount --bind '{host.dir(d)}' '{d}'" for d in PRIVATE_DIRS
    )
    # unshare(1) without --fork execs sh, which execs libvirtd: one PID from Popen to the daemon.
    script = (
        f"mount --make-rprivate / && {mounts} && "
        f"exec {LIBVIRTD} --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid"
    )
    pid = procs.spawn(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        host.root / "libvirtd.stdout.log",
        env={**os.environ, "LIBVIRT_DEFAULT_URI": host.uri},
    )
    return pid


def quiet_libvirt() -> None:
    """Stop libvirt-python printing every error to stderr; callers handle the exceptions."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def wait_ready(host: LibvirtHost, pid: int, timeout: float = 60.0) -> None:
    import libvirt

    quiet_libvirt()
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not procs.alive(pid):
            raise SandboxError(
                f"libvirtd for node {host.index} exited; see {host.root / 'libvirtd.stdout.log'} and {host.log}"
            )
        try:
            conn = libvirt.open(host.uri)
            try:
                conn.getCapabilities()
                return
            finally:
                conn.close()
        except libvirt.libvirtError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise SandboxError(f"libvirtd at {host.uri} did not answer within {timeout:.0f}s: {last}")


def domain_count(host: LibvirtHost) -> int:
    import libvirt

    conn = libvirt.open(host.uri)
    try:
        return len(conn.listAllDomains())
    finally:
        conn.close()


def destroy_all(host: LibvirtHost) -> None:
    """Destroy and undefine every domain on the host (used by `sandbox down`)."""
    import libvirt

    try:
        conn = libvirt.open(host.uri)
    except libvirt.libvirtError:
        return
    try:
        for dom in conn.listAllDomains():
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError:
                pass
    finally:
        conn.close()


def qemu_pids(host: LibvirtHost) -> list[int]:
    """PIDs of QEMU processes this host's libvirtd started (from its private pid files)."""
    out = []
    if host.qemu_run_dir.exists():
        for f in host.qemu_run_dir.glob("*.pid"):
            try:
                pid = int(f.read_text().strip())
            except (ValueError, OSError):
                continue
            if procs.alive(pid, "qemu"):  # libvirt may leave the pid file of a stopped domain
                out.append(pid)
    return out


def stop(host: LibvirtHost, pid: int | None) -> None:
    destroy_all(host)
    extra = procs.descendants(pid) if pid and procs.alive(pid) else []
    procs.stop(pid, marker="libvirtd")
    for qpid in {*qemu_pids(host), *extra}:
        procs.stop(qpid)


def wipe(host: LibvirtHost) -> None:
    shutil.rmtree(host.root, ignore_errors=True)
