"""Test images for the sandbox's shared image directory (stands in for NFS/Ceph)."""

from __future__ import annotations

from pathlib import Path

HALT_IMAGE = "halt.img"

# A 512-byte MBR boot sector: `cli; hlt; jmp $-1`, then the 0x55AA signature.
# SeaBIOS boots it and the vCPU idles halted at ~0% CPU. Keep the NIC option ROM
# disabled (<rom enabled='no'/>) or iPXE spins first.
_BOOT_CODE = bytes([0xFA, 0xF4, 0xEB, 0xFD])


def halt_sector() -> bytes:
    sector = bytearray(512)
    sector[: len(_BOOT_CODE)] = _BOOT_CODE
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def ensure_images(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    halt = directory / HALT_IMAGE
    if not halt.exists() or halt.read_bytes() != halt_sector():
        tmp = halt.with_suffix(".tmp")
        tmp.write_bytes(halt_sector())
        tmp.replace(halt)
    return {"halt": halt}
