"""The agent's FailoverReady step (reconcile._failover_ready) with a fake DomainManager and Kube."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt

from failovervm import guestfailover as gf
from failovervm.agent import reconcile as rc


class FakeDom:
    def name(self) -> str:
        return "fvm_ns_vm"


class FakeDM:
    def __init__(self) -> None:
        self.answers: list[gf.FailoverProbe | Exception] = []

    def failover_probe(self, _dom: Any) -> gf.FailoverProbe:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeKube:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def event(self, _obj: Any, reason: str, _message: str, type_: str = "Normal", **_kw: Any) -> None:
        self.events.append((reason, type_))


def ctx() -> tuple[rc.AgentContext, FakeDM, FakeKube]:
    dm, kube = FakeDM(), FakeKube()
    c = rc.AgentContext(node="n1", kube=kube, dm=dm, storage_roots=[], sysfs_root=Path("/nonexistent"))  # type: ignore[arg-type]
    return c, dm, kube


def vm(status: str | None = None, reason: str = "") -> dict[str, Any]:
    conds = [] if status is None else [{"type": "FailoverReady", "status": status, "reason": reason}]
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": "u"}, "status": {"conditions": conds}}


NOT_YET = gf.FailoverProbe(offered=True, negotiated=False, driver_ok=False)
NO_SUPPORT = gf.FailoverProbe(offered=True, negotiated=False, driver_ok=True)
ACKED = gf.FailoverProbe(offered=True, negotiated=True, driver_ok=True)


def test_booting_guest_is_rechecked_with_backoff_then_left_to_the_resync() -> None:
    c, dm, kube = ctx()
    dm.answers = [NOT_YET] * 6
    delays = [rc._failover_ready(c, vm("False", "GuestDriverNotNegotiated"), FakeDom())[1] for _ in range(6)]
    assert delays == [2.0, 4.0, 8.0, 16.0, None, None]
    assert kube.events == []  # "not booted yet" is no reason for a Warning


def test_ack_turns_true_once_with_an_event_and_resets_the_backoff() -> None:
    c, dm, kube = ctx()
    dm.answers = [NOT_YET, ACKED]
    rc._failover_ready(c, vm(), FakeDom())
    cond, delay = rc._failover_ready(c, vm("False", "GuestDriverNotNegotiated"), FakeDom())
    assert cond[1:3] == (True, "GuestDriverNegotiated") and delay is None
    assert kube.events == [("FailoverNegotiated", "Normal")]
    assert "fvm_ns_vm" not in c.failover_checks
    dm.answers = [ACKED]
    rc._failover_ready(c, vm("True", "GuestDriverNegotiated"), FakeDom())
    assert len(kube.events) == 1  # unchanged: no new event


def test_running_driver_without_standby_warns_once() -> None:
    c, dm, kube = ctx()
    dm.answers = [NO_SUPPORT, NO_SUPPORT]
    cond, _ = rc._failover_ready(c, vm(), FakeDom())
    assert cond[1:3] == (False, "GuestDriverNotNegotiated") and "net_failover" in cond[3]
    rc._failover_ready(c, vm("False", "GuestDriverNotNegotiated"), FakeDom())
    assert kube.events == [("FailoverNotNegotiated", "Warning")]


def test_probe_failure_is_unknown() -> None:
    c, dm, _ = ctx()
    dm.answers = [libvirt.libvirtError("monitor gone")]
    cond, delay = rc._failover_ready(c, vm(), FakeDom())
    assert cond[1:3] == ("Unknown", "ProbeFailed") and "monitor gone" in cond[3] and delay == 2.0


def _gauge(node: str, status: str) -> float:
    from failovervm.metrics import VMS_FAILOVER_READY

    return float(VMS_FAILOVER_READY.labels(node, status)._value.get())


def test_gauge_counts_running_vms_by_status_and_forgets_departed_domains() -> None:
    c, dm, _ = ctx()
    c.node = "gauge-node"
    dm.answers = [ACKED]
    rc._failover_ready(c, vm(), FakeDom())
    assert (_gauge("gauge-node", "True"), _gauge("gauge-node", "False")) == (1.0, 0.0)
    c.failover_status["fvm_ns_other"] = "False"
    c.prune_failover({"fvm_ns_other"})  # fvm_ns_vm migrated away
    assert (_gauge("gauge-node", "True"), _gauge("gauge-node", "False")) == (0.0, 1.0)
    c.forget_failover("fvm_ns_other")
    assert c.failover_status == {} and _gauge("gauge-node", "False") == 0.0
