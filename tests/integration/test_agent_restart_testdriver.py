"""The agent's reconcile against libvirt's test driver: spec changes to a running domain
(RestartRequired) and restart requests (the failovervm.io/restart annotation), including a CRD too
old to store status.restartedFor, which must not make the agent restart the domain forever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from failovervm import labels
from failovervm.agent import reconcile as rc
from failovervm.agent.libvirt_domains import LibvirtDomainManager
from tests.fakes import FakeKube
from tests.integration.test_domxml_testdriver import conn  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
UID = "5d1c0b9a-8e7f-4a6b-9c5d-4e3f2a1b0c9d"


class OldCRDKube(FakeKube):
    """An API server whose FailoverVM CRD predates status.restartedFor: its structural schema
    prunes the field from every write."""

    def admit(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        (obj.get("status") or {}).pop("restartedFor", None)
        return obj


def cluster(root: Path, kube: FakeKube | None = None) -> FakeKube:
    kube = kube or FakeKube()
    (root / "ns").mkdir(exist_ok=True)  # the namespace's own directory under the storage root
    (root / "ns" / "halt.img").write_bytes(bytes(512))  # the agent reads its header before define
    kube.add_vm({
        "metadata": {"name": "r", "namespace": "ns", "uid": UID, "generation": 1,
                     "finalizers": [labels.AGENT_FINALIZER], "annotations": {}},
        "spec": {"cpu": 1, "memory": "32Mi", "running": True, "terminationGracePeriodSeconds": 0,
                 "disks": [{"name": "boot", "path": str(root / "ns" / "halt.img"), "readOnly": True}],
                 "network": {"pool": "p"}},
        "status": {"phase": "Scheduled", "nodeName": "n1",
                   "vf": {"node": "n1", "pf": "pf0", "pciAddress": "0000:3b:02.1", "claimName": "c1"}},
    })
    kube.add_pool({"metadata": {"name": "p"}, "spec": {"standby": {"type": "bridge", "source": "br0"}}})
    return kube


def agent(conn: Any, kube: FakeKube, root: Path) -> rc.AgentContext:  # noqa: F811
    return rc.AgentContext(node="n1", kube=kube, dm=LibvirtDomainManager(conn), storage_roots=[str(root)],
                           sysfs_root=Path("/nonexistent"), kvm=False)


def stored(kube: FakeKube) -> dict[str, Any]:
    return kube.vms["ns", "r"]


def cond(kube: FakeKube, type_: str) -> dict[str, Any] | None:
    return next((c for c in stored(kube)["status"].get("conditions") or [] if c["type"] == type_), None)


def test_restart_required_and_restart(conn: Any, tmp_path: Path) -> None:  # noqa: F811
    kube = cluster(tmp_path)
    ctx = agent(conn, kube, tmp_path)
    assert rc.reconcile(ctx, "ns", "r").action != "invalid-spec"
    dom = conn.lookupByName("fvm_ns_r")
    first = dom.ID()
    assert dom.isActive() and stored(kube)["status"]["phase"] == "Running" and cond(kube, rc.RESTART_REQUIRED) is None

    # A spec change is written to the next boot only, and said so.
    kube.patch_vm("ns", "r", {"spec": {"memory": "48Mi"}})
    assert stored(kube)["metadata"]["generation"] == 2
    rc.reconcile(ctx, "ns", "r")
    c = cond(kube, rc.RESTART_REQUIRED)
    assert c and c["status"] == "True" and "memory 32 MiB -> 48 MiB" in c["message"], c
    assert conn.lookupByName("fvm_ns_r").ID() == first and kube.reasons().count(rc.RESTART_REQUIRED) == 1
    rc.reconcile(ctx, "ns", "r")
    assert kube.reasons().count(rc.RESTART_REQUIRED) == 1  # not repeated

    # One restart per request.
    kube.patch_vm("ns", "r", {"metadata": {"annotations": {labels.RESTART_ANNOTATION: "t1"}}})
    rc.reconcile(ctx, "ns", "r")
    dom = conn.lookupByName("fvm_ns_r")
    second = dom.ID()
    assert dom.isActive() and second != first and stored(kube)["status"]["restartedFor"] == "t1"
    assert "Restarting" in kube.reasons()
    rc.reconcile(ctx, "ns", "r")
    assert conn.lookupByName("fvm_ns_r").ID() == second
    c = cond(kube, rc.RESTART_REQUIRED)
    assert c and c["status"] == "False" and c["reason"] == "Applied"


def test_a_crd_that_drops_restarted_for_does_not_cause_a_restart_loop(conn: Any, tmp_path: Path) -> None:  # noqa: F811
    kube = cluster(tmp_path, OldCRDKube())
    ctx = agent(conn, kube, tmp_path)
    rc.reconcile(ctx, "ns", "r")
    first = conn.lookupByName("fvm_ns_r").ID()
    kube.patch_vm("ns", "r", {"metadata": {"annotations": {labels.RESTART_ANNOTATION: "t1"}}})
    for _ in range(3):
        assert rc.reconcile(ctx, "ns", "r").action == "restart-not-recorded"
    assert conn.lookupByName("fvm_ns_r").ID() == first  # never restarted
    assert stored(kube)["status"]["phase"] == "Running" and "RestartNotRecorded" in kube.reasons()
