"""Test images for the sandbox's shared image directory (stands in for NFS/Ceph).

A namespace's VMs may only use files under <storage root>/<namespace>/ (docs/security.md): the
sandbox provisions each namespace's directory with the test images, as an administrator would
(provision_namespace); `sandbox up` does it for the namespace `default` of the examples."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from failovervm_sandbox import guestimage

HALT_IMAGE = "halt.img"
GUEST_KERNEL = guestimage.GUEST_KERNEL
GUEST_INITRD = guestimage.GUEST_INITRD
GUEST_CMDLINE = guestimage.GUEST_CMDLINE

# A 512-byte MBR boot sector: `cli; hlt; jmp $-1`, then the 0x55AA signature.
# SeaBIOS boots it and the vCPU idles halted at ~0% CPU. Keep the NIC option ROM
# disabled (<rom enabled='no'/>) or iPXE spins first.
_BOOT_CODE = bytes([0xFA, 0xF4, 0xEB, 0xFD])


def halt_sector() -> bytes:
    sector = bytearray(512)
    sector[: len(_BOOT_CODE)] = _BOOT_CODE
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def ensure_images(directory: Path, guest: bool = True, cache_dir: Path | None = None) -> dict[str, Path]:
    """Write the halt sector and, unless ``guest`` is False, the Linux guest's kernel and initrd.

    Keys: "halt", and with the guest "guest_kernel" and "guest_initrd" (see guestimage; the
    guest is built from Debian packages once and cached, ``cache_dir`` overrides the cache).
    """
    directory.mkdir(parents=True, exist_ok=True)
    halt = directory / HALT_IMAGE
    if not halt.exists() or halt.read_bytes() != halt_sector():
        tmp = halt.with_suffix(".tmp")
        tmp.write_bytes(halt_sector())
        tmp.replace(halt)
    out = {"halt": halt}
    if guest:
        built = guestimage.ensure_guest(directory, cache_dir)
        out["guest_kernel"] = built["kernel"]
        out["guest_initrd"] = built["initrd"]
    return out


def namespace_dir(directory: Path, namespace: str) -> Path:
    """<images dir>/<namespace>: the only place the namespace's VMs may take their files from."""
    if not namespace or "/" in namespace or namespace in (".", ".."):
        raise ValueError(f"not a namespace name: {namespace!r}")
    return directory / namespace


def provision_namespace(directory: Path, namespace: str) -> Path:
    """Give ``namespace`` its own copy of the test images in <images dir>/<namespace>/ (the halt
    sector copied, since a VM may write it; the guest's kernel and initrd, which QEMU only reads,
    hard-linked when they exist). Idempotent; returns the directory."""
    target = namespace_dir(directory, namespace)
    target.mkdir(parents=True, exist_ok=True)
    for name in (HALT_IMAGE, GUEST_KERNEL, GUEST_INITRD):
        src, dst = directory / name, target / name
        if not src.exists() or (dst.exists() and dst.stat().st_size == src.stat().st_size):
            continue
        tmp = dst.with_name(f".{name}.tmp")
        tmp.unlink(missing_ok=True)
        if name == HALT_IMAGE:
            shutil.copyfile(src, tmp)
        else:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        tmp.replace(dst)
    return target
