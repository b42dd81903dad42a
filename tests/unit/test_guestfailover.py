"""FailoverReady: parsing QEMU's x-query-virtio-status and gating migrations on it."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from failovervm import guestfailover as gf
from failovervm import migration as mg

HOST_FEATURES = {"dev-features": ["VIRTIO_NET_F_STANDBY: Device acting as standby ... supported",
                                  "VIRTIO_NET_F_MAC: Device has given MAC address"], "transports": []}


def reply(guest: list[str], statuses: list[str], host: dict[str, Any] | None = None) -> str:
    return json.dumps({"return": {
        "name": "virtio-net",
        "host-features": HOST_FEATURES if host is None else host,
        "guest-features": {"dev-features": [f"{f}: description" for f in guest], "transports": []},
        "status": {"statuses": [f"{s}: description" for s in statuses]},
    }, "id": "libvirt-1"})


def test_status_command_is_qmp_json_for_the_standby_alias() -> None:
    cmd = json.loads(gf.status_command())
    assert cmd == {"execute": "x-query-virtio-status",
                   "arguments": {"path": "/machine/peripheral/ua-fvm-standby/virtio-backend"}}


def test_negotiated() -> None:
    probe = gf.parse_status(reply(["VIRTIO_NET_F_STANDBY", "VIRTIO_NET_F_MAC"],
                                  ["VIRTIO_CONFIG_S_DRIVER_OK", "VIRTIO_CONFIG_S_FEATURES_OK"]))
    assert probe.offered and probe.negotiated and probe.driver_ok
    type_, status, reason, message = gf.condition(probe)
    assert (type_, status, reason) == ("FailoverReady", True, "GuestDriverNegotiated")
    assert "VIRTIO_NET_F_STANDBY" in message


def test_driver_without_standby_is_a_definite_no() -> None:
    probe = gf.parse_status(reply(["VIRTIO_NET_F_MAC"], ["VIRTIO_CONFIG_S_DRIVER_OK"]))
    assert probe.driver_ok and not probe.negotiated
    _, status, reason, message = gf.condition(probe)
    assert (status, reason) == (False, "GuestDriverNotNegotiated")
    assert "net_failover" in message and "4.18" in message and "virtio-win" in message


def test_no_driver_yet() -> None:
    # The halt-sector guest: the device was never initialised (empty features and statuses).
    probe = gf.parse_status(reply([], []))
    assert probe.offered and not probe.driver_ok and not probe.negotiated
    _, status, reason, message = gf.condition(probe)
    assert (status, reason) == (False, "GuestDriverNotNegotiated")
    assert "still booting" in message and "net_failover" in message


def test_standby_not_offered() -> None:
    probe = gf.parse_status(reply([], [], host={"dev-features": ["VIRTIO_NET_F_MAC: x"]}))
    assert gf.condition(probe)[1:3] == (False, "StandbyNotOffered")


def test_not_running_and_probe_failure() -> None:
    assert gf.condition(None, running=False)[1:3] == (False, "NotRunning")
    _, status, reason, message = gf.condition(None, error="Requested operation is not valid")
    assert (status, reason) == ("Unknown", "ProbeFailed") and "not valid" in message


@pytest.mark.parametrize("bad", [
    "not json", "[]", json.dumps({"id": 1}),
    json.dumps({"error": {"class": "GenericError", "desc": "Path '/machine/x' is not a VirtIODevice"}}),
])
def test_bad_replies_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        gf.parse_status(bad)


def test_error_reply_message_is_kept() -> None:
    with pytest.raises(ValueError, match="not a VirtIODevice"):
        gf.parse_status(json.dumps({"error": {"class": "GenericError", "desc": "not a VirtIODevice"}}))


# -- the migration gate -----------------------------------------------------------------------------
def vm(name: str = "a", failover: str | None = None, require: bool | None = None,
       phase: str = "Running") -> dict[str, Any]:
    conds = [] if failover is None else [{"type": "FailoverReady", "status": failover,
                                          "reason": "GuestDriverNotNegotiated"}]
    spec: dict[str, Any] = {}
    if require is not None:
        spec["requireFailoverReady"] = require
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec,
            "status": {"phase": phase, "nodeName": "n1", "conditions": conds}}


def test_gate_ready_vm_passes() -> None:
    gate = mg.failover_gate(vm(failover="True"), require_by_default=True)
    assert gate.ready and not gate.refuse and gate.message == ""


@pytest.mark.parametrize("failover", ["False", "Unknown", None])
def test_gate_warns_by_default(failover: str | None) -> None:
    gate = mg.failover_gate(vm(failover=failover), require_by_default=False)
    assert not gate.ready and not gate.refuse
    assert "VF traffic stops" in gate.message


def test_gate_refuses_by_cluster_default_and_vm_overrides_it() -> None:
    assert mg.failover_gate(vm(failover="False"), require_by_default=True).refuse
    assert not mg.failover_gate(vm(failover="False", require=False), require_by_default=True).refuse
    gate = mg.failover_gate(vm(failover="False", require=True), require_by_default=False)
    assert gate.refuse and "requireFailoverReady" in gate.message


def test_evacuation_skips_refused_vms_with_a_reason() -> None:
    now = dt.datetime.now(dt.UTC)
    vms = [vm("a", failover="True"), vm("b", failover="False", require=True), vm("c", failover="False")]
    start, waiting = mg.plan_evacuation("n1", vms, [], mg.Limits(), now)
    assert [v["metadata"]["name"] for v in start] == ["a", "c"]
    assert waiting["ns/b"].startswith(mg.FAILOVER_NOT_READY)
    start, waiting = mg.plan_evacuation("n1", vms, [], mg.Limits(), now, require_failover_ready=True)
    assert [v["metadata"]["name"] for v in start] == ["a"]
    assert set(waiting) == {"ns/b", "ns/c"}
