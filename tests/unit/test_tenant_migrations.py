"""Migrations users create never use the capacity reserved for evacuations, and fail with a
reason when they cannot start (issue #14)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from failovervm import labels
from failovervm import migration as mg
from failovervm.controller import migrations
from failovervm.controller.context import ControllerContext, ControllerSettings
from tests.fakes import FakeKube

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def mig(name: str, vm: str, phase: str, *, evacuation: str | None = None, age: float = 1.0,
        ns: str = "team-a", target: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns,
                            "creationTimestamp": (NOW - dt.timedelta(seconds=age)).isoformat()}
    if evacuation:
        meta["labels"] = {labels.EVACUATION_LABEL: evacuation}
    spec: dict[str, Any] = {"vmName": vm}
    if target:
        spec["targetNode"] = target
    return {"metadata": meta, "spec": spec, "status": {"phase": phase, "sourceNode": "n1"}}


def vm(name: str, node: str = "n1", ns: str = "team-a") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
            "spec": {"evictionStrategy": "LiveMigrate"},
            "status": {"phase": "Running", "nodeName": node}}


def test_users_migrations_do_not_use_the_evacuation_budget() -> None:
    limits = mg.Limits(per_cluster=2, per_node_outbound=2)
    stuck = [mig(f"u{i}", f"other{i}", mg.SCHEDULING, target="no-such-node") for i in range(10)]
    start, waiting = mg.plan_evacuation("n1", [vm("a"), vm("b")], stuck, limits, NOW)
    assert [v["metadata"]["name"] for v in start] == ["a", "b"] and waiting == {}
    # Evacuations still count against it.
    evac = [mig("e1", "x", mg.RUNNING, evacuation="n2")]
    start, waiting = mg.plan_evacuation("n1", [vm("a"), vm("b")], stuck + evac, limits, NOW)
    assert [v["metadata"]["name"] for v in start] == ["a"] and "cluster limit" in waiting["team-a/b"]


def test_only_users_migrations_time_out_before_they_start() -> None:
    assert mg.start_overdue(mig("u", "v", mg.SCHEDULING, age=301), NOW, 300) == 301
    assert mg.start_overdue(mig("u", "v", mg.PENDING, age=299), NOW, 300) is None
    assert mg.start_overdue(mig("u", "v", mg.SCHEDULING, age=301), NOW, 0) is None
    assert mg.start_overdue(mig("e", "v", mg.SCHEDULING, age=3000, evacuation="n1"), NOW, 300) is None
    assert mg.start_overdue(mig("u", "v", mg.RUNNING, age=3000), NOW, 300) is None


def test_a_migration_to_a_node_that_does_not_exist_fails_with_the_reason(monkeypatch: Any) -> None:
    kube = FakeKube()
    kube.add_vm({**vm("v"), "status": {"phase": "Running", "nodeName": "n1",
                                       "migration": {"name": "m", "state": mg.SCHEDULING, "sourceNode": "n1"}}})
    m = mig("m", "v", mg.SCHEDULING, age=400, target="no-such-node")
    m["status"]["message"] = "node no-such-node does not exist"
    kube.add_migration(m)
    monkeypatch.setattr(migrations, "_now", lambda: NOW)
    ctx = ControllerContext(ControllerSettings(), kube)
    assert migrations.advance(ctx, "team-a", "m") == mg.FAILED
    st = kube.migrations["team-a", "m"]["status"]
    assert st["reason"] == "StartTimeout"
    assert st["message"] == "did not start within 400s (Scheduling): node no-such-node does not exist"
    assert "StartTimeout" in kube.reasons()
    assert not (kube.vms["team-a", "v"].get("status") or {}).get("migration")  # the VM is free again
