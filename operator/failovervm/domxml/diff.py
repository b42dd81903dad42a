"""What differs between a running domain and its next boot (pure; lxml only).

A FailoverVM's spec is written to the domain's persistent definition at once, but a running
QEMU keeps the configuration it was started with. ``restart_diff`` compares the running domain's
XML (libvirt's live XML, which also carries runtime details: aliases, PCI addresses, the VF) with
the persistent XML on the parts the spec controls, and says what changes at the next restart."""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from .xmlutil import parse_xml

_UNITS_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024, "mib": 1024,
              "mb": 1000 * 1000 / 1024, "g": 1024**2, "gib": 1024**2, "gb": 1000**3 / 1024}


def _memory_mib(el: etree._Element) -> str:
    node = el.find("memory")
    text = (node.text or "").strip() if node is not None else ""
    if node is None or not text:
        return ""
    kib = int(text) * _UNITS_KIB.get((node.get("unit") or "KiB").lower(), 1)
    return f"{kib / 1024:g} MiB"


def _text(path: str) -> Callable[[etree._Element], str]:
    def get(el: etree._Element) -> str:
        node = el.find(path)
        return (node.text or "").strip() if node is not None else ""
    return get


def _disks(el: etree._Element) -> str:
    out = []
    for disk in el.iterfind("devices/disk"):
        src = disk.find("source")
        target = disk.find("target")
        out.append(f"{target.get('dev') if target is not None else '?'}="
                   f"{(src.get('file') or src.get('dev') or src.get('name') or '') if src is not None else ''}"
                   f"{' (read-only)' if disk.find('readonly') is not None else ''}")
    return ", ".join(out)


_SOURCE_KEYS = {"network": ("network",), "bridge": ("bridge",), "direct": ("dev", "mode")}


def _standby(el: etree._Element) -> str:
    """The standby NIC's L2 attachment and model. The VF's hostdev interface is not compared (its
    address differs per node and the operator manages it), nor runtime source attributes (the live
    XML of a network interface also names the bridge behind the network)."""
    for iface in el.iterfind("devices/interface"):
        kind = iface.get("type") or ""
        if kind == "hostdev":
            continue
        src = iface.find("source")
        if src is not None and src.get("network"):
            # The live XML of a libvirt-network interface reports the network's actual type
            # (type='bridge' or 'direct') next to the network name.
            kind = "network"
        where = ",".join(f"{k}={src.get(k)}" for k in _SOURCE_KEYS.get(kind, ()) if src is not None and src.get(k))
        model = iface.find("model")
        mac = iface.find("mac")
        return (f"{kind}({where}) model={model.get('type') if model is not None else '?'} "
                f"mac={mac.get('address') if mac is not None else '?'}")
    return ""


def _accel(el: etree._Element) -> str:
    return {"kvm": "kvm", "qemu": "tcg"}.get(el.get("type") or "", el.get("type") or "")


_FIELDS: list[tuple[str, Callable[[etree._Element], str]]] = [
    ("memory", _memory_mib),
    ("vCPUs", _text("vcpu")),
    ("accelerator", _accel),
    ("kernel", _text("os/kernel")),
    ("initrd", _text("os/initrd")),
    ("kernel command line", _text("os/cmdline")),
    ("disks", _disks),
    ("standby NIC", _standby),
]


def restart_diff(running_xml: str | bytes, next_xml: str | bytes) -> list[str]:
    """Human-readable changes ("memory 32 MiB -> 64 MiB") that take effect at the next restart."""
    live, nxt = parse_xml(running_xml), parse_xml(next_xml)
    changes = []
    for label, get in _FIELDS:
        before, after = get(live), get(nxt)
        if before != after:
            changes.append(f"{label} {before or '(none)'} -> {after or '(none)'}")
    return changes
