"""Evacuation sweeps start exactly one migration per VM, even when several run at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from failovervm import migration as mg
from failovervm.controller import migrations as cm
from failovervm.controller.config import CONFIG


def vm(name: str = "vm", uid: str = "u1", node: str = "n1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid,
                         "labels": {"failovervm.io/node": node}},
            "spec": {}, "status": {"phase": "Running", "nodeName": node}}


def test_evacuation_name_is_stable_and_skips_taken_names() -> None:
    first = mg.evacuation_name(vm(), "n1", [])
    assert first == mg.evacuation_name(vm(), "n1", ["other"])
    assert first.startswith("evac-vm-") and len(first) == len("evac-vm-") + 8
    second = mg.evacuation_name(vm(), "n1", [first])
    assert second != first and second.startswith("evac-vm-")
    # A gap left by a deleted migration is reused rather than colliding with a later one.
    assert mg.evacuation_name(vm(), "n1", [second]) == first
    # Another node, another VM incarnation (uid): other names.
    assert mg.evacuation_name(vm(), "n2", []) != first
    assert mg.evacuation_name(vm(uid="u2"), "n1", []) != first


@pytest.mark.parametrize("name", ["a" * 63, "a" * 47 + ".b-c.d" + "e" * 10, "x." + "y" * 60])
def test_evacuation_name_is_a_valid_object_name(name: str) -> None:
    out = mg.evacuation_name(vm(name=name), "n1", [])
    assert len(out) <= 63
    for label in out.split("."):
        assert label and label[0].isalnum() and label[-1].isalnum(), out


class SlowKube:
    """Lists are slow, so two unserialised sweeps would both see no migration and both create one."""

    def __init__(self) -> None:
        self.vms = [vm("a", "ua"), vm("b", "ub")]
        self.migrations: list[dict[str, Any]] = []
        self.created: list[str] = []
        self.conflicts = 0
        self.lock = threading.Lock()

    def list_vms(self, _selector: str = "") -> list[dict[str, Any]]:
        return [dict(v) for v in self.vms]

    def list_migrations(self) -> list[dict[str, Any]]:
        with self.lock:
            snapshot = [dict(m) for m in self.migrations]
        time.sleep(0.05)
        return snapshot

    def create_migration_once(self, body: dict[str, Any]) -> dict[str, Any] | None:
        with self.lock:
            if any(m["metadata"]["name"] == body["metadata"]["name"] for m in self.migrations):
                self.conflicts += 1
                return None
            obj = {**body, "status": {"phase": "Pending"}}
            self.migrations.append(obj)
            self.created.append(body["metadata"]["name"])
            return obj

    def ensure_pod(self, _pod: Any) -> None:
        pass

    def event(self, *_a: Any, **_kw: Any) -> None:
        pass


def node() -> dict[str, Any]:
    return {"metadata": {"name": "n1", "uid": "node-uid", "labels": {}},
            "spec": {"unschedulable": True, "taints": [{"key": "node.kubernetes.io/unschedulable",
                                                        "effect": "NoSchedule"}]}}


def test_concurrent_sweeps_start_one_migration_per_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = SlowKube()
    monkeypatch.setattr(CONFIG, "kube", kube)
    threads = [threading.Thread(target=cm.reconcile_node, args=(node(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(m["spec"]["vmName"] for m in kube.migrations) == ["a", "b"], kube.created
    assert kube.conflicts == 0  # serialised: later sweeps saw the migrations and did not even try


def test_a_second_controller_with_the_same_view_gets_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-node lock is per process; a standby replica's admission webhook is another process.
    The fixed name makes its create collide instead of starting a second migration."""
    kube = SlowKube()
    monkeypatch.setattr(CONFIG, "kube", kube)
    stale = kube.list_migrations()
    cm.reconcile_node(node())
    monkeypatch.setattr(kube, "list_migrations", lambda: stale)
    cm._reconcile_node(node())  # what another process, which holds no lock of ours, would do
    assert len(kube.migrations) == 2 and kube.conflicts == 2
