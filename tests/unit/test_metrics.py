"""Prometheus metrics: recording helpers, the agent's migration hooks and the pool gauges."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from failovervm import metrics
from failovervm.agent.migrate import Migrator
from failovervm.agent.reconcile import AgentContext
from tests.fakes import FakeDomainManager, FakeKube
from tests.unit.conftest import MakeControllerContext


def _node() -> str:
    return f"node-{uuid.uuid4().hex[:8]}"


def _v(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _hist(name: str, le: str | None = None) -> float:
    if le is None:
        return _v(f"{name}_count") or 0.0
    return _v(f"{name}_bucket", le=le) or 0.0


def test_migration_result_labels_are_bounded() -> None:
    assert metrics.migration_result("Succeeded") == "succeeded"
    assert metrics.migration_result("Failed") == "failed"
    assert metrics.migration_result("Aborted") == "aborted"
    assert metrics.migration_result("SomethingElse") == "failed"


def test_record_migration_counts_by_result_and_node() -> None:
    node = _node()
    metrics.record_migration("failed", node)
    metrics.record_migration("Failed", node)
    metrics.record_migration("Aborted", node)
    assert _v("failovervm_migrations_total", result="failed", node=node) == 2
    assert _v("failovervm_migrations_total", result="aborted", node=node) == 1
    assert _v("failovervm_migrations_total", result="succeeded", node=node) is None


def test_record_migration_succeeded_observes_duration_and_downtime() -> None:
    node = _node()
    d_count, d_le5 = _hist("failovervm_migration_duration_seconds"), _hist(
        "failovervm_migration_duration_seconds", "5.0")
    d_le2 = _hist("failovervm_migration_duration_seconds", "2.0")
    t_count, t_le50 = _hist("failovervm_migration_downtime_milliseconds"), _hist(
        "failovervm_migration_downtime_milliseconds", "50.0")
    t_le25 = _hist("failovervm_migration_downtime_milliseconds", "25.0")

    metrics.record_migration_succeeded(node, 3.2, {"downtimeMs": 42, "totalTimeMs": 3100})

    assert _v("failovervm_migrations_total", result="succeeded", node=node) == 1
    assert _hist("failovervm_migration_duration_seconds") == d_count + 1
    assert _hist("failovervm_migration_duration_seconds", "5.0") == d_le5 + 1
    assert _hist("failovervm_migration_duration_seconds", "2.0") == d_le2
    assert _hist("failovervm_migration_downtime_milliseconds") == t_count + 1
    assert _hist("failovervm_migration_downtime_milliseconds", "50.0") == t_le50 + 1
    assert _hist("failovervm_migration_downtime_milliseconds", "25.0") == t_le25


def test_unknown_duration_and_missing_downtime_are_not_observed() -> None:
    node = _node()
    d_count = _hist("failovervm_migration_duration_seconds")
    t_count = _hist("failovervm_migration_downtime_milliseconds")
    metrics.record_migration_succeeded(node, 0.0, {})  # agent restarted: wall time unknown, no stats
    assert _v("failovervm_migrations_total", result="succeeded", node=node) == 1
    assert _hist("failovervm_migration_duration_seconds") == d_count
    assert _hist("failovervm_migration_downtime_milliseconds") == t_count


def test_histogram_bucket_ranges() -> None:
    assert _v("failovervm_migration_duration_seconds_bucket", le="0.5") is not None
    assert _v("failovervm_migration_duration_seconds_bucket", le="600.0") is not None
    assert _v("failovervm_migration_downtime_milliseconds_bucket", le="5.0") is not None
    assert _v("failovervm_migration_downtime_milliseconds_bucket", le="2000.0") is not None


def test_existing_metrics_are_kept() -> None:
    node = _node()
    metrics.RECONCILE_ERRORS.labels(component="agent", kind="x").inc()
    metrics.LIBVIRT_CONNECTED.labels(node=node).set(1)
    metrics.DOMAIN_START_SECONDS.labels(node=node).observe(0.3)
    metrics.VF_ATTACH.labels(node=node, result="ok").inc()
    assert _v("failovervm_libvirt_connected", node=node) == 1
    assert _v("failovervm_domain_start_seconds_count", node=node) == 1
    assert _v("failovervm_vf_attach_total", node=node, result="ok") == 1
    assert (_v("failovervm_reconcile_errors_total", component="agent", kind="x") or 0) >= 1


# -- VF pool gauges ---------------------------------------------------------------------------------
def _pool_vals(pool: str, node: str) -> dict[str, float | None]:
    return {s: _v("failovervm_vf_pool_vfs", pool=pool, node=node, state=s) for s in metrics.VF_POOL_STATES}


def test_set_pool_vfs_sets_and_removes_stale_nodes() -> None:
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    metrics.set_pool_vfs(pool, [
        {"node": "a", "total": 8, "allocated": 3, "free": 5},
        {"node": "b", "total": 4, "allocated": 0},  # free derived
    ])
    assert _pool_vals(pool, "a") == {"total": 8, "allocated": 3, "free": 5}
    assert _pool_vals(pool, "b") == {"total": 4, "allocated": 0, "free": 4}

    metrics.set_pool_vfs(pool, [{"node": "a", "total": 8, "allocated": 4, "free": 4}])  # b left the pool
    assert _pool_vals(pool, "a") == {"total": 8, "allocated": 4, "free": 4}
    assert _pool_vals(pool, "b") == {"total": None, "allocated": None, "free": None}

    metrics.set_pool_vfs(pool, None)  # the pool is gone
    assert _pool_vals(pool, "a") == {"total": None, "allocated": None, "free": None}


def test_set_pool_vfs_keeps_other_pools() -> None:
    p1, p2 = f"p1-{uuid.uuid4().hex[:6]}", f"p2-{uuid.uuid4().hex[:6]}"
    metrics.set_pool_vfs(p1, [{"node": "a", "total": 2, "allocated": 1, "free": 1}])
    metrics.set_pool_vfs(p2, [{"node": "a", "total": 6, "allocated": 0, "free": 6}])
    metrics.set_pool_vfs(p1, [])
    assert _pool_vals(p1, "a")["total"] is None
    assert _pool_vals(p2, "a")["total"] == 6


def test_refresh_pool_status_sets_pool_gauges(controller_ctx: MakeControllerContext) -> None:
    from failovervm.controller import vms

    pool = f"pool-{uuid.uuid4().hex[:6]}"
    vfs = [{"pciAddress": f"0000:00:02.{i}"} for i in range(4)]
    obj = {"metadata": {"name": pool}, "status": {"nodes": [
        {"node": "n1", "vfs": vfs, "simulated": True}, {"node": "n2", "vfs": vfs[:2]}]}}
    kube = FakeKube()
    kube.add_pool(obj)
    for i, (node, pci) in enumerate([("n1", "0000:00:02.1"), ("n2", "0000:00:02.0"), ("n2", "0000:00:02.1")]):
        kube.add_claim({"metadata": {"name": f"c{i}"}, "spec": {"node": node, "pool": pool, "pciAddress": pci}})
    ctx = controller_ctx(kube)

    vms.refresh_pool_status(ctx, pool)
    assert _pool_vals(pool, "n1") == {"total": 4, "allocated": 1, "free": 3}
    assert _pool_vals(pool, "n2") == {"total": 2, "allocated": 2, "free": 0}

    del kube.inventories["n2"]  # n2 left
    vms.refresh_pool_status(ctx, pool)
    assert _pool_vals(pool, "n2")["total"] is None
    assert _pool_vals(pool, "n1")["total"] == 4

    del kube.pools[pool]  # deleted
    vms.refresh_pool_status(ctx, pool)
    assert _pool_vals(pool, "n1")["total"] is None


# -- the agent's migration outcomes -------------------------------------------------------------------
def _migrator(node: str) -> tuple[Migrator, FakeKube]:
    """A Migrator with migration m1 of default/demo running, and the fake API it writes to."""
    kube = FakeKube()
    kube.add_vm({**_VM, "status": {**_VM["status"], "migration": {"name": "m1"}, "phase": "Migrating"}})
    kube.add_migration({"metadata": {"namespace": "default", "name": "m1"}, "status": {"phase": "Running"}})
    # No domain here and no target node (it is gone): the domain cannot be anywhere.
    ctx = AgentContext(node=node, kube=kube, dm=FakeDomainManager(), storage_roots=[],
                       sysfs_root=Path("/nonexistent"))
    return Migrator(ctx=ctx, transport="tcp"), kube


def _migration_status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.migrations["default", "m1"]["status"])


_VM = {"metadata": {"namespace": "default", "name": "demo", "uid": "u1", "generation": 1},
       "status": {"vf": {"pf": "pf0"}}}
_MIG = {"name": "m1", "targetNode": "node-target", "targetPciAddress": "0000:00:02.3", "targetClaim": "c"}


def test_agent_finish_succeeded_records_metrics() -> None:
    node = _node()
    d_count = _hist("failovervm_migration_duration_seconds")
    t_count = _hist("failovervm_migration_downtime_milliseconds")
    m, kube = _migrator(node)
    m._finish_succeeded(_VM, _MIG, {"downtimeMs": 120}, 7.5)
    assert _migration_status(kube)["phase"] == "Succeeded"
    assert _v("failovervm_migrations_total", result="succeeded", node=node) == 1
    assert _hist("failovervm_migration_duration_seconds") == d_count + 1
    assert _hist("failovervm_migration_downtime_milliseconds") == t_count + 1


@pytest.mark.parametrize(("phase", "result"), [("Failed", "failed"), ("Aborted", "aborted")])
def test_agent_finish_failed_records_result_from_phase(phase: str, result: str) -> None:
    node = _node()
    m, kube = _migrator(node)
    m._finish_failed(_VM, _MIG, "MigrationFailed", "boom", phase=phase)
    assert _migration_status(kube)["phase"] == phase
    assert _v("failovervm_migrations_total", result=result, node=node) == 1
    other = "aborted" if result == "failed" else "failed"
    assert _v("failovervm_migrations_total", result=other, node=node) is None
