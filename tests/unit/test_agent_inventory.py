"""The agent's inventory round (`agent.inventory.publish`) on the fakes: the node's VFs into its own
VFInventory (named after the Node, owned by it), and the Node's `vf.failovervm.io/<pool>` extended
resources kept true as VFs and pools come and go, written only when they differ."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from failovervm import labels
from failovervm.agent.inventory import VF_RESOURCE_NAME_INVALID, VF_RESOURCES_UPDATED, publish
from failovervm.kube import ApiException
from tests.fakes import FakeKube
from tests.fakes.kube import node
from tests.unit.test_vfs import make_pf

A, B = labels.vf_resource("pool-a"), labels.vf_resource("pool-b")


def _pool(name: str, pf: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"pfNames": [pf], "nodeSelector": selector or {}, "standby": {"source": "br0"}}}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FakeKube, str, Path]:
    name = f"node-{uuid.uuid4().hex[:8]}"  # the metrics registry is global
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", [f"0000:3b:02.{i}" for i in range(4)])
    make_pf(tmp_path, "ens1f1", "0000:3c:00.0", [f"0000:3c:02.{i}" for i in range(2)])
    kube = FakeKube()
    obj = node(name, labels={"sriov": "a"})
    obj["status"].update({"capacity": {"cpu": "8", "memory": "16Gi"}, "allocatable": {"cpu": "8", "memory": "15Gi"}})
    kube.add_node(obj)
    kube.add_pool(_pool("pool-a", "ens1f0", {"sriov": "a"}))
    kube.add_pool(_pool("pool-b", "ens1f1", {"sriov": "b"}))
    return kube, name, tmp_path


def _vf(kube: FakeKube, name: str) -> tuple[dict[str, str], dict[str, str]]:
    status = kube.nodes[name]["status"]
    return ({k: v for k, v in status["capacity"].items() if k.startswith("vf.")},
            {k: v for k, v in status["allocatable"].items() if k.startswith("vf.")})


def _node_events(kube: FakeKube, name: str) -> list[str]:
    return [e.note for e in kube.events if e.kind == "Node" and e.name == name and e.reason == VF_RESOURCES_UPDATED]


def _sample(metric: str, **lbl: str) -> float | None:
    return REGISTRY.get_sample_value(metric, lbl)


def test_advertises_the_selecting_pools_and_keeps_it_true(setup: tuple[FakeKube, str, Path]) -> None:
    kube, name, sysfs = setup
    assert publish(kube, name, sysfs) == {"pool-a": 4}
    assert _vf(kube, name) == ({A: "4"}, {A: "4"})
    assert kube.nodes[name]["status"]["capacity"]["cpu"] == "8"  # nothing else touched
    assert kube.nodes[name]["status"]["allocatable"]["memory"] == "15Gi"
    inv = kube.inventories[name]
    assert [p["name"] for p in inv["spec"]["pools"]] == ["pool-a"] and inv["spec"]["nodeName"] == name
    assert inv["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": name, "uid": kube.nodes[name]["metadata"]["uid"]}]
    assert [v["pciAddress"] for v in inv["spec"]["pools"][0]["vfs"]] == [f"0000:3b:02.{i}" for i in range(4)]
    assert "status" not in kube.pools["pool-a"] or "nodes" not in kube.pools["pool-a"]["status"]
    assert _node_events(kube, name) == [f"VF extended resources: {A}=4 (was unset)"]
    assert _sample("failovervm_node_vf_resource", node=name, pool="pool-a") == 4
    assert _sample("failovervm_node_vf_resource_patches_total", node=name, result="written") == 1

    # The periodic round: the Node already says so, nothing is written.
    version = kube.nodes[name]["metadata"]["resourceVersion"]
    publish(kube, name, sysfs)
    assert kube.nodes[name]["metadata"]["resourceVersion"] == version
    assert len(_node_events(kube, name)) == 1
    assert _sample("failovervm_node_vf_resource_patches_total", node=name, result="written") == 1

    # VFs disappear (sriov_numvfs lowered).
    (sysfs / "devices" / "pci0000:00" / "0000:3b:00.0" / "sriov_numvfs").write_text("2\n")
    publish(kube, name, sysfs)
    assert _vf(kube, name) == ({A: "2"}, {A: "2"})
    assert _node_events(kube, name)[-1] == f"VF extended resources: {A}=2 (was 4)"

    # The node's labels change: pool-b selects it, pool-a no longer does.
    kube.nodes[name]["metadata"]["labels"]["sriov"] = "b"
    assert publish(kube, name, sysfs) == {"pool-b": 2}
    assert _vf(kube, name) == ({B: "2"}, {B: "2"})
    assert _node_events(kube, name)[-1] == f"VF extended resources: {A} removed (was 2), {B}=2 (was unset)"
    assert _sample("failovervm_node_vf_resource", node=name, pool="pool-a") is None
    assert _sample("failovervm_node_vf_resource", node=name, pool="pool-b") == 2

    # The pool is deleted.
    del kube.pools["pool-b"]
    assert publish(kube, name, sysfs) == {}
    assert _vf(kube, name) == ({}, {})
    assert _sample("failovervm_node_vf_resource", node=name, pool="pool-b") is None


def test_re_asserts_what_a_kubelet_zeroed_and_nothing_after_a_restart(setup: tuple[FakeKube, str, Path]) -> None:
    kube, name, sysfs = setup
    publish(kube, name, sysfs)
    # A kubelet re-registering a recreated node zeroes the extended resources it does not know.
    kube.nodes[name]["status"]["capacity"][A] = "0"
    kube.nodes[name]["status"]["allocatable"][A] = "0"
    publish(kube, name, sysfs)
    assert _vf(kube, name) == ({A: "4"}, {A: "4"})
    assert _node_events(kube, name)[-1] == f"VF extended resources: {A}=4 (was 0)"
    # A restarted agent finds the Node right and writes nothing.
    version = kube.nodes[name]["metadata"]["resourceVersion"]
    publish(kube, name, sysfs)
    assert kube.nodes[name]["metadata"]["resourceVersion"] == version


def test_a_failed_node_write_leaves_the_pools_published_and_is_retried(
    setup: tuple[FakeKube, str, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    kube, name, sysfs = setup
    kube.fail("patch_node_status", ApiException(status=403, reason="Forbidden"))
    with caplog.at_level(logging.WARNING):
        assert publish(kube, name, sysfs) == {"pool-a": 4}
    assert "advertising the VF extended resources" in caplog.text and "Forbidden" in caplog.text
    assert _vf(kube, name) == ({}, {}) and kube.inventories[name]["spec"]["pools"][0]["total"] == 4
    assert _sample("failovervm_node_vf_resource_patches_total", node=name, result="failed") == 1
    publish(kube, name, sysfs)
    assert _vf(kube, name) == ({A: "4"}, {A: "4"})


def test_a_failed_inventory_write_does_not_keep_the_node_from_being_advertised(
    setup: tuple[FakeKube, str, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    kube, name, sysfs = setup
    kube.fail("put_inventory", ApiException(status=500, reason="boom"))
    with caplog.at_level(logging.WARNING):
        publish(kube, name, sysfs)
    assert "into its VFInventory failed" in caplog.text
    assert _vf(kube, name) == ({A: "4"}, {A: "4"})
    assert name not in kube.inventories
    publish(kube, name, sysfs)
    assert kube.inventories[name]["spec"]["pools"][0]["total"] == 4


def test_an_unchanged_inventory_is_neither_read_nor_written_again(setup: tuple[FakeKube, str, Path]) -> None:
    """Bounded writes: the round writes the node's VFInventory only when it changed, and, knowing
    what it wrote, does not read it again either; a conflict (someone else wrote it) makes it read."""
    from failovervm.agent.inventory import Published

    kube, name, sysfs = setup
    published = Published()
    publish(kube, name, sysfs, published)
    kube.calls.clear()
    version = kube.inventories[name]["metadata"]["resourceVersion"]
    publish(kube, name, sysfs, published)
    assert [c.method for c in kube.calls] == ["get_node", "list_pools"]
    assert kube.inventories[name]["metadata"]["resourceVersion"] == version
    # Someone else replaced it: the stale copy costs a conflict, the next round reads and repairs it.
    kube.put_inventory({**kube.inventories[name], "spec": {"nodeName": name, "pools": []}}, kube.inventories[name])
    (sysfs / "devices" / "pci0000:00" / "0000:3b:00.0" / "sriov_numvfs").write_text("2\n")
    publish(kube, name, sysfs, published)
    publish(kube, name, sysfs, published)
    assert kube.inventories[name]["spec"]["pools"][0]["total"] == 2


def test_an_old_pool_status_with_vf_lists_is_left_to_the_controller(setup: tuple[FakeKube, str, Path]) -> None:
    """Upgrade: VF lists an earlier version's agents wrote into VFPool status are not the agent's
    to touch any more (the controller drops them with its next count)."""
    kube, name, sysfs = setup
    kube.pools["pool-a"]["status"] = {"nodes": [{"node": name, "vfs": [{"pciAddress": "0000:3b:02.0"}]}]}
    kube.calls.clear()
    publish(kube, name, sysfs)
    assert "update_pool_status" not in [c.method for c in kube.calls]


def test_a_pool_whose_name_is_no_resource_name_is_reported_not_advertised(
    setup: tuple[FakeKube, str, Path],
) -> None:
    kube, name, sysfs = setup
    long_name = "p" * 64  # created before the CRD limited VFPool names to 63 characters
    kube.add_pool(_pool(long_name, "ens1f1", {"sriov": "a"}))
    assert publish(kube, name, sysfs) == {"pool-a": 4, long_name: 2}
    assert _vf(kube, name) == ({A: "4"}, {A: "4"})
    warnings = [e for e in kube.events if e.reason == VF_RESOURCE_NAME_INVALID]
    assert [(e.kind, e.name, e.type) for e in warnings] == [("VFPool", long_name, "Warning")]


def test_a_node_that_is_gone_gets_no_write(setup: tuple[FakeKube, str, Path]) -> None:
    kube, name, sysfs = setup
    del kube.nodes[name]
    assert publish(kube, name, sysfs) == {}
    assert not kube.events


def test_what_the_agent_reports_is_documented() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    capacity, observability = (docs / "capacity.md").read_text(), (docs / "observability.md").read_text()
    assert capacity.startswith("# Capacity: VMs as consumers of their nodes\n")
    for name in (VF_RESOURCES_UPDATED, VF_RESOURCE_NAME_INVALID, "failovervm_node_vf_resource",
                 "failovervm_node_vf_resource_patches_total", labels.VF_RESOURCE_DOMAIN):
        assert name in capacity and name in observability, name
