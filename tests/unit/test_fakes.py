"""The shared fakes behave like what they stand in for, where the logic relies on it."""

from __future__ import annotations

from typing import Any

import pytest

from failovervm import labels
from failovervm.agent.domains import (
    DomainError,
    DomainNotFound,
    DomainState,
    MigrationRequest,
    OperationInvalid,
    PausedReason,
)
from failovervm.kube import ApiException
from tests.fakes import FakeDomainManager, FakeKube
from tests.fakes.kube import node


def _vm(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": "u1", **meta}, "spec": {"running": True},
            "status": {"phase": "Pending"}}


def test_a_stale_copy_costs_a_conflict_and_a_retry_not_a_lost_write() -> None:
    kube = FakeKube()
    kube.add_vm(_vm())
    stale = kube.get_vm("ns", "vm")
    kube.update_vm_status("ns", "vm", lambda st: {**st, "nodeName": "n1"})
    seen: list[dict[str, Any]] = []

    def mutate(st: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(st))
        return {**st, "phase": "Running"}

    written = kube.update_vm_status("ns", "vm", mutate, current=stale)
    assert written is not None and written["status"] == {"phase": "Running", "nodeName": "n1"}
    assert [s.get("nodeName") for s in seen] == [None, "n1"]  # the stale copy, then the re-read
    assert kube.update_vm_status("ns", "vm", mutate, uid="other") is None


def test_status_is_not_written_by_a_main_resource_patch_and_spec_bumps_generation() -> None:
    kube = FakeKube()
    kube.add_vm(_vm())
    version = kube.vms["ns", "vm"]["metadata"]["resourceVersion"]
    obj = kube.patch_vm("ns", "vm", {"spec": {"running": False}, "status": {"phase": "Hacked"}})
    assert obj["status"] == {"phase": "Pending"} and obj["metadata"]["generation"] == 2
    assert obj["metadata"]["resourceVersion"] != version
    obj = kube.patch_vm("ns", "vm", {"metadata": {"labels": {labels.VM_NODE: "n1"}}})
    assert obj["metadata"]["generation"] == 2 and kube.list_vms(f"{labels.VM_NODE}=n1") == [obj]
    assert kube.list_vms(f"{labels.VM_NODE}=n2") == []


def test_finalizers_hold_a_deletion_until_the_last_one_goes() -> None:
    kube = FakeKube()
    kube.add_vm(_vm())
    assert kube.set_finalizer("ns", "vm", labels.AGENT_FINALIZER, True) is not None
    assert kube.delete_vm("ns", "vm") and kube.vms["ns", "vm"]["metadata"]["deletionTimestamp"]
    assert kube.set_finalizer("ns", "vm", "another", True) is None  # no new finalizers while deleting
    kube.set_finalizer("ns", "vm", labels.AGENT_FINALIZER, False)
    assert kube.get_vm("ns", "vm") is None


def test_admission_failures_and_events() -> None:
    class Pruning(FakeKube):
        def admit(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
            (obj.get("status") or {}).pop("restartedFor", None)
            return obj

    kube = Pruning()
    kube.add_vm(_vm())
    written = kube.update_vm_status("ns", "vm", lambda st: {**st, "restartedFor": "t1"})
    assert written is not None and "restartedFor" not in written["status"]
    kube.fail("get_vm", RuntimeError("apiserver: 503"))
    with pytest.raises(RuntimeError, match="apiserver: 503"):
        kube.get_vm("ns", "vm")
    assert kube.get_vm("ns", "vm") is not None
    kube.event(kube.vms["ns", "vm"], "Started", "domain started", component="agent/n1")
    kube.event(kube.vms["ns", "vm"], "Started", "domain started", component="agent/n1")
    assert kube.reasons() == ["Started", "Started"] and kube.events[0].type == "Normal"


def test_claims_are_locks_and_migrations_are_created_once() -> None:
    kube = FakeKube()
    claim = {"metadata": {"name": "n1-0000-3b-02-1"}, "spec": {"vm": "ns/vm"}}
    assert kube.create_claim(claim) and not kube.create_claim(claim)
    uid = kube.claims["n1-0000-3b-02-1"]["metadata"]["uid"]
    kube.delete_claim("n1-0000-3b-02-1", uid="someone-else")
    assert kube.list_claims()
    kube.delete_claim("n1-0000-3b-02-1", uid=uid)
    assert kube.list_claims() == []
    mig = {"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"}}
    assert kube.create_migration_once(mig) is not None and kube.create_migration_once(mig) is None
    assert [m["metadata"]["name"] for m in kube.list_migrations("ns")] == ["m1"] and kube.list_migrations("x") == []


def test_a_hook_lands_before_a_call_and_calls_are_recorded() -> None:
    kube = FakeKube()
    kube.add_vm(_vm())
    kube.add_node(node("n1"))

    def another_writer() -> None:
        kube.update_vm_status("ns", "vm", lambda st: {**st, "phase": "Running"})

    kube.before("patch_vm", None, another_writer)  # nothing before the first call, a write before the second
    seen = kube.patch_vm("ns", "vm", {"metadata": {"labels": {"a": "1"}}})
    with pytest.raises(ApiException) as conflict:
        kube.patch_vm("ns", "vm", {"metadata": {"labels": {"a": "2"},
                                                "resourceVersion": seen["metadata"]["resourceVersion"]}})
    assert conflict.value.status == 409 and kube.vms["ns", "vm"]["metadata"]["labels"] == {"a": "1"}
    assert kube.vms["ns", "vm"]["status"]["phase"] == "Running" and kube.hooks["patch_vm"] == []
    assert kube.patch_node("n1", {"spec": {"unschedulable": True}})["spec"] == {"unschedulable": True}
    assert "generation" not in kube.nodes["n1"]["metadata"]
    assert kube.calls_of("patch_node") == [("n1", {"spec": {"unschedulable": True}})]
    assert [args[:2] for args in kube.calls_of("patch_vm")] == [("ns", "vm")] * 2  # the failed one too
    kube.list_vms()
    assert kube.calls_of("list_vms") == [(None,)]  # defaults filled in


def test_fake_domains_define_run_stop_and_migrate() -> None:
    dm = FakeDomainManager()
    xml = "<domain type='test'><name>fvm_ns_vm</name><uuid>8f0e3d1c-0000-4000-8000-000000000001</uuid></domain>"
    dom = dm.define(xml)
    assert dom.uuid.endswith("0001") and not dm.is_active(dom)
    dm.start(dom)
    with pytest.raises(OperationInvalid):
        dm.start(dom)
    assert dm.state(dom) == (DomainState.RUNNING, 1) and dm.stop(dom) == "shutdown"
    dm.start(dom)
    target = dm.remote("test:///n2")
    with pytest.raises(DomainError):
        dm.migrate(dom, "test:///n3", MigrationRequest("<dest/>", xml))
    dm.migrate(dom, "test:///n2", MigrationRequest("<dest/>", xml))
    assert dm.lookup("fvm_ns_vm") is None and target.domains["fvm_ns_vm"].live_xml == "<dest/>"
    with pytest.raises(DomainNotFound):
        dm.state(dom)
    there = dm.open_remote("test:///n2")
    moved = there.lookup("fvm_ns_vm")
    assert moved is not None and there.state(moved).state == DomainState.RUNNING
    there.clear_leftover(moved)
    there.close()
    assert target.closed and target.domains == {}
    assert dm.calls == ["define", "start", "start", "stop", "start", "migrate", "migrate"]


def test_fake_domains_fail_when_told() -> None:
    dm = FakeDomainManager()
    dom = dm.add("fvm_ns_vm", DomainState.PAUSED, PausedReason.STARTING_UP)
    dm.fail("destroy", DomainError("internal error"))
    with pytest.raises(DomainError, match="internal error"):
        dm.destroy(dom)
    dm.destroy(dom)
    dm.undefine(dom)
    assert dm.lookup("fvm_ns_vm") is None and dm.calls == ["destroy", "destroy", "undefine"]
