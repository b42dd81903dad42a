"""Has the guest accepted failover? Read from QEMU, no guest agent needed.

Failover only works when the guest's virtio-net driver acknowledges the STANDBY feature
(Linux >= 4.18 with net_failover, or a recent virtio-win). A guest without it sees two
independent NICs and loses its VF traffic when the VF is unplugged for a live migration.

QEMU shows what the guest driver acked: ``x-query-virtio-status`` on the standby NIC's
virtio backend lists the negotiated ``guest-features``, and QEMU emits the
``FAILOVER_NEGOTIATED`` event when the driver acks STANDBY. This module is pure: it builds
the monitor command, parses the reply, and turns it into the ``FailoverReady`` condition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from failovervm import domxml

CONDITION: Final = "FailoverReady"
STANDBY_FEATURE: Final = "VIRTIO_NET_F_STANDBY"
DRIVER_OK: Final = "VIRTIO_CONFIG_S_DRIVER_OK"
NEGOTIATED_EVENT: Final = "FAILOVER_NEGOTIATED"

REASON_NEGOTIATED: Final = "GuestDriverNegotiated"
REASON_NOT_NEGOTIATED: Final = "GuestDriverNotNegotiated"
REASON_NOT_OFFERED: Final = "StandbyNotOffered"
REASON_NOT_RUNNING: Final = "NotRunning"
REASON_PROBE_FAILED: Final = "ProbeFailed"

NEEDS: Final = "the guest needs net_failover (Linux >= 4.18 with CONFIG_NET_FAILOVER, or a recent virtio-win)"

Condition = tuple[str, bool | str, str, str]


def backend_path(alias: str = domxml.STANDBY_ALIAS) -> str:
    return f"/machine/peripheral/{alias}/virtio-backend"


def status_command(alias: str = domxml.STANDBY_ALIAS) -> str:
    """The QMP command for libvirt_qemu.qemuMonitorCommand (built as data, never by formatting)."""
    return json.dumps({"execute": "x-query-virtio-status", "arguments": {"path": backend_path(alias)}})


@dataclass(frozen=True)
class FailoverProbe:
    offered: bool  # QEMU offers STANDBY on this NIC (it was started with failover=on)
    negotiated: bool  # the guest driver acked STANDBY
    driver_ok: bool  # the guest driver finished initialising the device


def _names(features: Any) -> list[str]:
    """'VIRTIO_NET_F_STANDBY: Device acting as ...' -> 'VIRTIO_NET_F_STANDBY'."""
    out = []
    for item in (features or {}).get("dev-features") or []:
        out.append(str(item).split(":", 1)[0].strip())
    return out


def parse_status(reply: str | bytes) -> FailoverProbe:
    """Parse the monitor's reply. ValueError on an error reply or an unexpected shape."""
    try:
        doc = json.loads(reply)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unparseable QMP reply: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("unexpected QMP reply")
    if "error" in doc:
        err = doc["error"] or {}
        raise ValueError(f"QMP error {err.get('class', '?')}: {err.get('desc', '')}")
    ret = doc.get("return")
    if not isinstance(ret, dict):
        raise ValueError("QMP reply without a return value")
    guest = _names(ret.get("guest-features"))
    host = _names(ret.get("host-features"))
    statuses = [str(s).split(":", 1)[0].strip() for s in (ret.get("status") or {}).get("statuses") or []]
    return FailoverProbe(offered=STANDBY_FEATURE in host, negotiated=STANDBY_FEATURE in guest,
                         driver_ok=DRIVER_OK in statuses)


def condition(probe: FailoverProbe | None, *, running: bool = True, error: str = "") -> Condition:
    """The FailoverReady condition (type, status, reason, message) for a probe result."""
    if not running:
        return CONDITION, False, REASON_NOT_RUNNING, "the domain is not running; evaluated again when it runs"
    if probe is None:
        return CONDITION, "Unknown", REASON_PROBE_FAILED, f"could not query the virtio-net standby: {error}"
    if not probe.offered:
        return (CONDITION, False, REASON_NOT_OFFERED,
                "the virtio-net standby NIC was not started with failover=on (no <teaming type='persistent'/>)")
    if probe.negotiated:
        return (CONDITION, True, REASON_NEGOTIATED,
                "the guest's virtio-net driver acknowledged VIRTIO_NET_F_STANDBY: the guest keeps networking "
                "through the virtio standby while the VF is unplugged for a live migration")
    if probe.driver_ok:
        return (CONDITION, False, REASON_NOT_NEGOTIATED,
                "the guest's virtio-net driver is running but did not acknowledge VIRTIO_NET_F_STANDBY; "
                f"{NEEDS}. A live migration will cut its VF traffic: there is no standby path in the guest")
    return (CONDITION, False, REASON_NOT_NEGOTIATED,
            "the guest has not acknowledged VIRTIO_NET_F_STANDBY: its virtio-net driver has not initialised "
            f"the standby NIC (still booting, or no virtio-net driver); {NEEDS}")
