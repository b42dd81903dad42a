"""MAC addresses: stable generation, normalisation and validation.

Both members of a failover team must carry the same MAC: the guest's
net_failover driver pairs the virtio NIC and the VF by MAC address.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

_HEX12_RE: Final = re.compile(r"[0-9a-f]{12}")
_SEPARATED_RE: Final = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")
_CISCO_RE: Final = re.compile(r"[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}")


def generate_mac(seed: str) -> str:
    """Return a locally administered unicast MAC derived from ``sha256(seed)``.

    The same seed always gives the same MAC, so a VM keeps its address across
    re-definitions and migrations when seeded with e.g. its UID.
    """
    if not seed:
        raise ValueError("MAC seed must be a non-empty string")
    octets = bytearray(hashlib.sha256(seed.encode("utf-8")).digest()[:6])
    # Clear the multicast bit, set the locally administered bit.
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def normalize_mac(s: str) -> str:
    """Return ``s`` as a lowercase, colon-separated MAC.

    Accepts ``aa:bb:cc:dd:ee:ff``, ``aa-bb-cc-dd-ee-ff``, ``aabb.ccdd.eeff`` and
    ``aabbccddeeff`` in any case. Raises :class:`ValueError` for anything else.
    """
    if not isinstance(s, str):
        raise ValueError(f"MAC address must be a string, got {type(s).__name__}")
    low = s.strip().lower()
    if _SEPARATED_RE.fullmatch(low) or _CISCO_RE.fullmatch(low):
        digits = low.replace(":", "").replace("-", "").replace(".", "")
    elif _HEX12_RE.fullmatch(low):
        digits = low
    else:
        raise ValueError(f"malformed MAC address {s!r}: expected six hex octets such as 52:54:00:12:34:56")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def validate_mac(s: str) -> str:
    """Return the normalised MAC if it is usable for a NIC, else raise :class:`ValueError`.

    Rejects malformed, multicast (including broadcast) and all-zero addresses.
    """
    mac = normalize_mac(s)
    if mac == "00:00:00:00:00:00":
        raise ValueError(f"MAC address {s!r} is all zeros")
    if mac == "ff:ff:ff:ff:ff:ff":
        raise ValueError(f"MAC address {s!r} is the broadcast address")
    if int(mac[:2], 16) & 0x01:
        raise ValueError(f"MAC address {s!r} is a multicast address (lowest bit of the first octet set)")
    return mac
