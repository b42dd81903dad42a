"""A VM created without any status gets its pod at once and no Pending status while kube-scheduler
answers within pending_status_after_seconds: Scheduled is then its first and only status write
(controller.vms._pending_pod). Pending is written once the answer takes longer, or is Unschedulable,
with the VM's creation as the time Scheduled turned False, so its pod is never taken for one that
predates a release."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from failovervm import conditions
from failovervm.controller import vms
from failovervm.controller.context import ControllerContext
from tests.fakes import FakeKube
from tests.unit.test_vm_pods import NS, kube, scheduled, vm_obj, vm_pods  # noqa: F401 (the kube fixture)

CREATED = "2026-11-30T06:00:00Z"


@pytest.fixture
def ctx(kube: FakeKube, controller_ctx: Callable[..., ControllerContext]) -> ControllerContext:  # noqa: F811
    """The production default (5 s), and the VM status writes that reach the fake API server
    counted in kube.status_writes."""
    replace = kube._replace_status
    kube.status_writes = 0  # type: ignore[attr-defined]

    def counted(kind: str, *args: Any) -> Any:
        if kind == "failovervms":
            kube.status_writes += 1  # type: ignore[attr-defined]
        return replace(kind, *args)

    kube._replace_status = counted  # type: ignore[method-assign]
    return controller_ctx(kube, pending_status_after_seconds=5.0)


def _new_vm(kube: FakeKube, **spec: Any) -> dict[str, Any]:  # noqa: F811
    vm = vm_obj(**spec)
    vm["metadata"]["creationTimestamp"] = CREATED
    return kube.add_vm(vm)


def _status_writes(kube: FakeKube) -> int:  # noqa: F811
    return int(kube.status_writes)  # type: ignore[attr-defined]


def _later(ctx: ControllerContext, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """As if the VM's pod had been created `seconds` ago."""
    monkeypatch.setattr(ctx.placing, "pod_age", lambda uid: seconds)


def test_a_new_vm_bound_at_once_has_one_status_write(kube: FakeKube, ctx: ControllerContext) -> None:  # noqa: F811
    vm = _new_vm(kube)
    assert vms.ensure_scheduled(ctx, NS, "vm", hint=vm) == "waiting-for-kube-scheduler"
    [pod] = vm_pods(kube)
    assert "status" not in kube.vms[NS, "vm"] and _status_writes(kube) == 0
    assert not vms.needs_look(ctx, kube.vms[NS, "vm"])  # kube-scheduler's answer is a pod event
    kube.bind_pod(NS, pod["metadata"]["name"], "n1")
    assert vms.on_running_pod_event(ctx, "MODIFIED", kube.pods[NS, pod["metadata"]["name"]]) == "placed:n1"
    assert _status_writes(kube) == 1 and kube.vms[NS, "vm"]["status"]["phase"] == "Scheduled"
    assert not kube.calls_of("get_vm")  # the binding's pass started from the creation event's copy
    assert len(vm_pods(kube)) == 1 and len(kube.claims) == 1


def test_pending_is_written_when_kube_scheduler_takes_longer(kube: FakeKube, ctx: ControllerContext,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    vm = _new_vm(kube)
    vms.ensure_scheduled(ctx, NS, "vm", hint=vm)
    [pod] = vm_pods(kube)
    _later(ctx, monkeypatch, 6.0)
    assert vms.needs_look(ctx, kube.vms[NS, "vm"])
    assert vms.wake_pending(ctx) == [f"{NS}/vm"]
    cond = scheduled(kube)
    assert (kube.vms[NS, "vm"]["status"]["phase"], cond["status"], cond["reason"]) == (
        "Pending", "False", "WaitingForScheduler")
    assert cond["lastTransitionTime"] == CREATED  # False since the VM exists: its pod is not older
    assert not vms.needs_look(ctx, kube.vms[NS, "vm"])  # from now on as before: the binding acts
    kube.bind_pod(NS, pod["metadata"]["name"], "n1")
    assert vms.on_running_pod_event(ctx, "MODIFIED", kube.pods[NS, pod["metadata"]["name"]]) == "placed:n1"
    assert [p["metadata"]["uid"] for p in vm_pods(kube)] == [pod["metadata"]["uid"]]  # kept, not replaced
    assert _status_writes(kube) == 2


def test_an_unschedulable_answer_is_written_at_once(kube: FakeKube, ctx: ControllerContext) -> None:  # noqa: F811
    vm = _new_vm(kube, nodeSelector={"zone": "nowhere"})
    vms.ensure_scheduled(ctx, NS, "vm", hint=vm)
    [pod] = vm_pods(kube)
    message = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    kube.pod_unschedulable(NS, pod["metadata"]["name"], message)
    assert vms.on_running_pod_event(ctx, "MODIFIED", kube.pods[NS, pod["metadata"]["name"]]) == "pending:Unschedulable"
    cond = scheduled(kube)
    assert (cond["reason"], cond["message"], cond["lastTransitionTime"]) == ("Unschedulable", message, CREATED)


def test_a_vm_with_a_status_gets_pending_before_its_pod(kube: FakeKube, ctx: ControllerContext) -> None:  # noqa: F811
    _new_vm(kube)

    def stopped_before(st: dict[str, Any]) -> dict[str, Any]:
        st["phase"] = "Stopped"
        st["conditions"] = conditions.set_condition(None, "Scheduled", False, "NotRunning", "spec.running was false")
        return st

    kube.update_vm_status(NS, "vm", stopped_before)
    writes = _status_writes(kube)
    assert vms.ensure_scheduled(ctx, NS, "vm") == "pending:WaitingForScheduler"
    assert _status_writes(kube) == writes + 1 and scheduled(kube)["reason"] == "WaitingForScheduler"
    assert len(vm_pods(kube)) == 1
