"""The agent's reconcile of one VM (reconcile.reconcile) step by step, with the shared fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from failovervm import domxml, labels
from failovervm.agent import reconcile as rc
from failovervm.agent.domains import DomainError, DomainState, PausedReason
from tests.fakes import FakeDomainManager, FakeKube

DNAME = "fvm_ns_vm"
UID = "0b6f4a52-3c1d-4e8f-9a7b-2d5e6f708192"


def cluster(root: Path, *, running: bool = True, finalizer: bool = True, pool: bool = True,
            **meta: Any) -> FakeKube:
    kube = FakeKube()
    kube.add_vm({
        "metadata": {"name": "vm", "namespace": "ns", "uid": UID, "generation": 1, "annotations": {},
                     "labels": {labels.VM_NODE: "n1"},
                     "finalizers": [labels.AGENT_FINALIZER] if finalizer else [], **meta},
        "spec": {"cpu": 1, "memory": "32Mi", "running": running, "terminationGracePeriodSeconds": 0,
                 "disks": [{"name": "boot", "path": str(root / "ns" / "boot.img"), "readOnly": True}],
                 "network": {"pool": "p"}},
        "status": {"phase": "Scheduled", "nodeName": "n1",
                   "vf": {"node": "n1", "pf": "pf0", "pciAddress": "0000:3b:02.1", "claimName": "c1"}},
    })
    if pool:
        kube.add_pool({"metadata": {"name": "p"}, "spec": {"standby": {"type": "bridge", "source": "br0"}}})
    return kube


def agent(kube: FakeKube, dm: FakeDomainManager, root: Path) -> rc.AgentContext:
    return rc.AgentContext(node="n1", kube=kube, dm=dm, storage_roots=[str(root)], sysfs_root=Path("/nonexistent"))


def status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.vms["ns", "vm"]["status"])


def cond(kube: FakeKube, type_: str) -> tuple[str, str]:
    c = next(c for c in status(kube)["conditions"] if c["type"] == type_)
    return c["status"], c["reason"]


def test_a_new_vm_is_defined_started_and_gets_its_vf(tmp_path: Path) -> None:
    kube, dm = cluster(tmp_path, finalizer=False), FakeDomainManager()
    out = rc.reconcile(agent(kube, dm, tmp_path), "ns", "vm")
    assert (out.action, out.requeue_after) == ("running", None)
    assert dm.calls == ["define", "start", "attach_vf"]
    assert labels.AGENT_FINALIZER in kube.vms["ns", "vm"]["metadata"]["finalizers"]
    st = status(kube)
    assert st["phase"] == "Running" and st["domain"]["name"] == DNAME and st["domain"]["generation"] == 1
    assert st["domain"]["uuid"] == dm.domains[DNAME].uuid and st["mac"]
    assert cond(kube, "Ready") == ("True", "Running") and cond(kube, "VFAttached") == ("True", "Attached")
    assert cond(kube, "FailoverReady")[0] == "True"
    assert kube.reasons() == ["Defined", "Started", "VFAttached", "FailoverNegotiated"]

    # Nothing changed: nothing is done, nothing is said.
    assert rc.reconcile(agent(kube, dm, tmp_path), "ns", "vm").action == "running"
    assert dm.calls == ["define", "start", "attach_vf"] and len(kube.events) == 4


def test_spec_running_false_stops_the_domain(tmp_path: Path) -> None:
    kube, dm = cluster(tmp_path, running=False), FakeDomainManager()
    ctx = agent(kube, dm, tmp_path)
    assert rc.reconcile(ctx, "ns", "vm").action == "stopped"
    assert dm.calls == ["define"] and status(kube)["phase"] == "Stopped" and status(kube)["domain"]
    kube.patch_vm("ns", "vm", {"spec": {"running": True}})
    rc.reconcile(ctx, "ns", "vm")
    kube.patch_vm("ns", "vm", {"spec": {"running": False}})
    assert rc.reconcile(ctx, "ns", "vm").action == "stopped"
    assert dm.calls == ["define", "define", "start", "attach_vf", "define", "stop"]
    assert cond(kube, "Ready") == ("False", "Stopped") and cond(kube, "FailoverReady")[0] == "False"
    assert kube.reasons()[-1] == "Stopped" and not dm.domains[DNAME].active


def test_failures_to_start_back_off_and_are_reported(tmp_path: Path) -> None:
    kube, dm = cluster(tmp_path), FakeDomainManager()
    ctx = agent(kube, dm, tmp_path)
    dm.fail("start", DomainError("internal error: qemu unexpectedly closed the monitor"))
    out = rc.reconcile(ctx, "ns", "vm")
    assert (out.action, out.requeue_after) == ("start-failed", 5.0)
    assert cond(kube, "Ready") == ("False", "StartFailed") and status(kube)["phase"] == "Failed"
    assert kube.reasons() == ["Defined", "StartFailed"]
    assert rc.reconcile(ctx, "ns", "vm").action == "backoff"


def test_a_missing_pool_and_an_invalid_spec_fail_the_vm(tmp_path: Path) -> None:
    kube, dm = cluster(tmp_path, pool=False), FakeDomainManager()
    assert rc.reconcile(agent(kube, dm, tmp_path), "ns", "vm").action == "no-pool"
    assert cond(kube, "Ready") == ("False", "PoolNotFound") and dm.calls == []
    kube = cluster(tmp_path)
    kube.patch_vm("ns", "vm", {"spec": {"disks": [{"name": "boot", "path": "/etc/shadow"}]}})
    assert rc.reconcile(agent(kube, dm, tmp_path), "ns", "vm").action == "invalid-spec"
    assert cond(kube, "Ready") == ("False", "InvalidSpec") and kube.reasons() == ["InvalidSpec"] and dm.calls == []


def test_a_paused_domain_is_a_failure_unless_it_migrates(tmp_path: Path) -> None:
    kube, dm = cluster(tmp_path), FakeDomainManager()
    ctx = agent(kube, dm, tmp_path)
    rc.reconcile(ctx, "ns", "vm")
    dm.domains[DNAME].state, dm.domains[DNAME].reason = DomainState.PAUSED, PausedReason.USER
    assert rc.reconcile(ctx, "ns", "vm").action == "paused"
    assert cond(kube, "Ready") == ("False", "Paused") and kube.reasons()[-1] == "DomainPaused"
    dm.domains[DNAME].reason = PausedReason.MIGRATION
    assert rc.reconcile(ctx, "ns", "vm").action == "running"


def test_deletion_removes_the_domain_then_the_finalizer(tmp_path: Path) -> None:
    kube, dm = cluster(tmp_path), FakeDomainManager()
    ctx = agent(kube, dm, tmp_path)
    rc.reconcile(ctx, "ns", "vm")
    kube.delete_vm("ns", "vm")
    assert rc.reconcile(ctx, "ns", "vm").action == "deleted"
    assert dm.calls[-2:] == ["stop", "undefine"] and dm.domains == {} and kube.vms == {}
    assert kube.reasons()[-1] == "Deleted"
    assert rc.reconcile(ctx, "ns", "vm").action == "absent"


def test_eviction_shuts_down_and_hands_the_vm_back(tmp_path: Path) -> None:
    kube, dm = cluster(tmp_path), FakeDomainManager()
    ctx = agent(kube, dm, tmp_path)
    rc.reconcile(ctx, "ns", "vm")
    kube.patch_vm("ns", "vm", {"metadata": {"annotations": {labels.EVICT_ANNOTATION: "n1"}}})
    assert rc.reconcile(ctx, "ns", "vm").action == "evicted"
    assert dm.domains == {} and status(kube)["phase"] == "Pending" and "nodeName" not in status(kube)
    meta = kube.vms["ns", "vm"]["metadata"]
    assert labels.VM_NODE not in meta["labels"] and labels.EVICT_ANNOTATION not in meta["annotations"]
    assert cond(kube, "Ready") == ("False", "Evicted") and kube.reasons()[-1] == "Evicted"


def test_foreign_and_orphaned_domains(tmp_path: Path) -> None:
    kube, dm = cluster(tmp_path), FakeDomainManager()
    dm.add(DNAME)  # not created by failovervm: no owner metadata
    assert rc.reconcile(agent(kube, dm, tmp_path), "ns", "vm").action == "foreign-domain" and dm.calls == []

    kube, dm = cluster(tmp_path), FakeDomainManager()
    ctx = agent(kube, dm, tmp_path)
    rc.reconcile(ctx, "ns", "vm")
    kube.vms.clear()  # the VM went without the agent's finalizer
    assert rc.reconcile(ctx, "ns", "vm").action == "orphan-removed" and dm.domains == {}

    kube, dm = cluster(tmp_path), FakeDomainManager()
    ctx = agent(kube, dm, tmp_path)
    rc.reconcile(ctx, "ns", "vm")
    old_uuid = dm.domains[DNAME].uuid
    new_uid = "5e0c9d1a-7b2f-4c3e-8d4a-1f2b3c4d5e6f"
    kube.vms["ns", "vm"]["metadata"]["uid"] = new_uid  # a new VM of the same name
    assert rc.reconcile(ctx, "ns", "vm").action == "running" and dm.domains[DNAME].uuid != old_uuid
    owner = domxml.parse_owner(dm.domains[DNAME].xml)
    assert owner is not None and owner.uid == new_uid


def test_a_graceful_stop_runs_in_a_slow_section(tmp_path: Path) -> None:
    """#13: the shutdown (up to terminationGracePeriodSeconds) gives the reconcile slot back
    (AgentContext.slow, agent.slots), so guests ignoring ACPI never hold up other VMs."""
    import contextlib
    from collections.abc import Iterator

    kube, dm = cluster(tmp_path), FakeDomainManager()
    ctx = agent(kube, dm, tmp_path)
    rc.reconcile(ctx, "ns", "vm")
    kube.patch_vm("ns", "vm", {"spec": {"running": False}})
    sections: list[list[str]] = []

    @contextlib.contextmanager
    def slow() -> Iterator[None]:
        sections.append(list(dm.calls))
        yield
        sections[-1] = dm.calls[len(sections[-1]):]

    ctx.slow = slow
    assert rc.reconcile(ctx, "ns", "vm").action == "stopped"
    assert sections == [["stop"]]


def test_an_image_whose_header_names_an_undeclared_backing_file_is_never_defined(tmp_path: Path) -> None:
    """Issue #14: a guest wrote a qcow2 header naming a host file onto its raw disk, then the spec
    was switched to qcow2. The agent reads the header before define and refuses."""
    kube, dm = cluster(tmp_path), FakeDomainManager()
    path = str(tmp_path / "ns" / "boot.img")
    kube.patch_vm("ns", "vm", {"spec": {"disks": [{"name": "boot", "path": path, "format": "qcow2"}]}})
    dm.images[path] = {"format": "qcow2", "backing-filename": "/etc/shadow", "full-backing-filename": "/etc/shadow"}
    out = rc.reconcile(agent(kube, dm, tmp_path), "ns", "vm")
    assert out.action == "image-refused" and out.requeue_after == 5.0
    assert "define" not in dm.calls and DNAME not in dm.domains
    assert cond(kube, "Ready") == ("False", "ImageRefused") and status(kube)["phase"] == "Failed"
    note = next(e for e in kube.events if e.reason == "ImageRefused").note
    assert "spec.disks[boot]" in note and "/etc/shadow" in note and "does not declare" in note
