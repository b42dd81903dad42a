"""The agent's FailoverReady step (reconcile._failover_ready) with a fake DomainManager and Kube."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from failovervm import guestfailover as gf
from failovervm.agent import reconcile as rc
from failovervm.agent.domains import DomainError, DomainRef
from tests.fakes import FakeDomainManager, FakeKube


def ctx() -> tuple[rc.AgentContext, FakeDomainManager, FakeKube]:
    dm, kube = FakeDomainManager(), FakeKube()
    c = rc.AgentContext(node="n1", kube=kube, dm=dm, storage_roots=[], sysfs_root=Path("/nonexistent"))
    return c, dm, kube


def dom(dm: FakeDomainManager) -> DomainRef:
    return dm.lookup("fvm_ns_vm") or dm.add("fvm_ns_vm")


def events(kube: FakeKube) -> list[tuple[str, str]]:
    return [(e.reason, e.type) for e in kube.events]


def vm(status: str | None = None, reason: str = "") -> dict[str, Any]:
    conds = [] if status is None else [{"type": "FailoverReady", "status": status, "reason": reason}]
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": "u"}, "status": {"conditions": conds}}


NOT_YET = gf.FailoverProbe(offered=True, negotiated=False, driver_ok=False)
NO_SUPPORT = gf.FailoverProbe(offered=True, negotiated=False, driver_ok=True)
ACKED = gf.FailoverProbe(offered=True, negotiated=True, driver_ok=True)


def test_booting_guest_is_rechecked_with_backoff_then_left_to_the_resync() -> None:
    c, dm, kube = ctx()
    dm.probes = [NOT_YET] * 6
    delays = [rc._failover_ready(c, vm("False", "GuestDriverNotNegotiated"), dom(dm))[1] for _ in range(6)]
    assert delays == [2.0, 4.0, 8.0, 16.0, None, None]
    assert events(kube) == []  # "not booted yet" is no reason for a Warning


def test_ack_turns_true_once_with_an_event_and_resets_the_backoff() -> None:
    c, dm, kube = ctx()
    dm.probes = [NOT_YET, ACKED]
    rc._failover_ready(c, vm(), dom(dm))
    cond, delay = rc._failover_ready(c, vm("False", "GuestDriverNotNegotiated"), dom(dm))
    assert cond[1:3] == (True, "GuestDriverNegotiated") and delay is None
    assert events(kube) == [("FailoverNegotiated", "Normal")]
    assert "fvm_ns_vm" not in c.failover_checks
    dm.probes = [ACKED]
    rc._failover_ready(c, vm("True", "GuestDriverNegotiated"), dom(dm))
    assert len(events(kube)) == 1  # unchanged: no new event


def test_running_driver_without_standby_warns_once() -> None:
    c, dm, kube = ctx()
    dm.probes = [NO_SUPPORT, NO_SUPPORT]
    cond, _ = rc._failover_ready(c, vm(), dom(dm))
    assert cond[1:3] == (False, "GuestDriverNotNegotiated") and "net_failover" in cond[3]
    rc._failover_ready(c, vm("False", "GuestDriverNotNegotiated"), dom(dm))
    assert events(kube) == [("FailoverNotNegotiated", "Warning")]


def test_probe_failure_is_unknown() -> None:
    c, dm, _ = ctx()
    dm.probes = [DomainError("monitor gone")]
    cond, delay = rc._failover_ready(c, vm(), dom(dm))
    assert cond[1:3] == ("Unknown", "ProbeFailed") and "monitor gone" in cond[3] and delay == 2.0


def _gauge(node: str, status: str) -> float:
    from failovervm.metrics import VMS_FAILOVER_READY

    return float(VMS_FAILOVER_READY.labels(node, status)._value.get())


def test_gauge_counts_running_vms_by_status_and_forgets_departed_domains() -> None:
    c, dm, _ = ctx()
    c.node = "gauge-node"
    dm.probes = [ACKED]
    rc._failover_ready(c, vm(), dom(dm))
    assert (_gauge("gauge-node", "True"), _gauge("gauge-node", "False")) == (1.0, 0.0)
    c.failover_status["fvm_ns_other"] = "False"
    c.prune_failover({"fvm_ns_other"})  # fvm_ns_vm migrated away
    assert (_gauge("gauge-node", "True"), _gauge("gauge-node", "False")) == (0.0, 1.0)
    c.forget_failover("fvm_ns_other")
    assert c.failover_status == {} and _gauge("gauge-node", "False") == 0.0
