"""Prometheus metrics of the controller and the agents.

Label values are bounded: node and pool names (as many as the cluster has), and fixed
enumerations (result, state). No VM or migration names are used as labels.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_ERRORS = Counter(
    "failovervm_reconcile_errors_total", "Reconcile errors", ["component", "kind"])
LIBVIRT_CONNECTED = Gauge(
    "failovervm_libvirt_connected", "1 when the agent's libvirt connection is up", ["node"])
DOMAIN_START_SECONDS = Histogram(
    "failovervm_domain_start_seconds", "Time from define to a running domain", ["node"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
VF_ATTACH = Counter(
    "failovervm_vf_attach_total", "VF hot-plug attempts by result", ["node", "result"])

MIGRATION_RESULTS = ("succeeded", "failed", "aborted")
MIGRATIONS = Counter(
    "failovervm_migrations_total", "Finished live migrations by result and source node", ["result", "node"])
MIGRATION_DURATION_SECONDS = Histogram(
    "failovervm_migration_duration_seconds", "Wall time of successful libvirt live migrations",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
MIGRATION_DOWNTIME_MS = Histogram(
    "failovervm_migration_downtime_milliseconds", "Guest downtime of successful live migrations (libvirt downtimeMs)",
    buckets=(5, 10, 25, 50, 100, 200, 300, 500, 1000, 2000))
MIGRATION_STANDBY_SECONDS = Histogram(
    "failovervm_migration_standby_seconds", "How long the guest ran without its VF, on its virtio standby, per "
    "finished migration (from the start of the transfer to the domain running on the destination, or on the "
    "source again)", buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
MIGRATIONS_LIMITED = Counter(
    "failovervm_migrations_limited_total", "Migrations ended by their policy's limits, by reason (CompletionTimeout, "
    "NoProgress, PostCopyFailed)", ["reason"])

FAILOVER_STATES = ("True", "False", "Unknown")
VMS_FAILOVER_READY = Gauge(
    "failovervm_vms_failover_ready", "Running VMs on the node by their FailoverReady status (True: the guest "
    "negotiated failover)", ["node", "status"])
MIGRATIONS_WITHOUT_FAILOVER = Counter(
    "failovervm_migrations_without_failover_total", "Migrations of VMs whose guest had not negotiated failover, "
    "by what the policy did (warned: ran with a warning; refused)", ["action"])

VMS_RECOVERED = Counter(
    "failovervm_vms_recovered_total", "VMs released from a fenced node to be restarted elsewhere, by why the node "
    "counts as fenced (NodeOutOfService, HostDownConfirmed)", ["reason"])


def set_failover_counts(node: str, statuses: Iterable[str]) -> None:
    counts = {s: 0 for s in FAILOVER_STATES}
    for st in statuses:
        counts[st if st in counts else "Unknown"] += 1
    for st, n in counts.items():
        VMS_FAILOVER_READY.labels(node, st).set(n)


VF_POOL_STATES = ("total", "allocated", "free")
VF_POOL_VFS = Gauge(
    "failovervm_vf_pool_vfs", "VFs of a VFPool on a node, by state", ["pool", "node", "state"])

# pool -> nodes that currently have series in VF_POOL_VFS (so that departed nodes can be removed).
_pool_nodes: dict[str, set[str]] = {}
_pool_lock = threading.Lock()

VF_RESOURCE = Gauge(
    "failovervm_node_vf_resource", "The extended resource vf.failovervm.io/<pool> the agent advertises in its "
    "Node's status capacity and allocatable: the pool's VFs on the node", ["node", "pool"])
VF_RESOURCE_RESULTS = ("written", "failed")
VF_RESOURCE_PATCHES = Counter(
    "failovervm_node_vf_resource_patches_total", "Writes of the Node's vf.failovervm.io/* extended resources "
    "(only when they differ from what the agent found) by result (written, failed)", ["node", "result"])

# node -> pools that currently have series in VF_RESOURCE.
_resource_pools: dict[str, set[str]] = {}


def migration_result(phase: str) -> str:
    """FailoverVMMigration phase (Succeeded/Failed/Aborted) -> the `result` label value."""
    low = phase.lower()
    return low if low in MIGRATION_RESULTS else "failed"


def record_migration(
    result: str, node: str, duration_seconds: float | None = None, downtime_ms: float | None = None,
    standby_ms: float | None = None,
) -> None:
    """Count one finished migration from `node` (its source). Duration and downtime are observed
    only when known (> 0 s, >= 0 ms): an agent that restarted mid-migration does not know the wall time."""
    result = migration_result(result)
    MIGRATIONS.labels(result=result, node=node).inc()
    if duration_seconds is not None and duration_seconds > 0:
        MIGRATION_DURATION_SECONDS.observe(duration_seconds)
    if downtime_ms is not None and downtime_ms >= 0:
        MIGRATION_DOWNTIME_MS.observe(downtime_ms)
    if standby_ms is not None and standby_ms >= 0:
        MIGRATION_STANDBY_SECONDS.observe(standby_ms / 1000.0)


def record_migration_succeeded(node: str, wall: float, stats: Mapping[str, Any]) -> None:
    downtime, standby = stats.get("downtimeMs"), stats.get("standbyMs")
    record_migration("succeeded", node, wall, float(downtime) if downtime is not None else None,
                     float(standby) if standby is not None else None)


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def set_pool_vfs(pool: str, entries: Iterable[Mapping[str, Any]] | None) -> None:
    """Publish a VFPool's per-node counts (entries with node, total, allocated, free: controller.vms.pool_counts).

    Series of nodes that left the pool are removed; `entries=None` (the pool is gone) removes all
    of the pool's series.
    """
    with _pool_lock:
        seen: set[str] = set()
        for e in entries or []:
            node = str(e.get("node") or "")
            if not node:
                continue
            seen.add(node)
            total, allocated = _count(e.get("total")), _count(e.get("allocated"))
            free = _count(e["free"]) if e.get("free") is not None else max(total - allocated, 0)
            for state, value in (("total", total), ("allocated", allocated), ("free", free)):
                VF_POOL_VFS.labels(pool=pool, node=node, state=state).set(value)
        for node in _pool_nodes.get(pool, set()) - seen:
            for state in VF_POOL_STATES:
                try:
                    VF_POOL_VFS.remove(pool, node, state)
                except KeyError:
                    pass
        if seen:
            _pool_nodes[pool] = seen
        else:
            _pool_nodes.pop(pool, None)


def set_vf_resources(node: str, pools: Mapping[str, int]) -> None:
    """What `node` advertises now (pool -> VFs); the series of pools no longer advertised go."""
    with _pool_lock:
        for pool, value in pools.items():
            VF_RESOURCE.labels(node=node, pool=pool).set(value)
        for pool in _resource_pools.get(node, set()) - set(pools):
            try:
                VF_RESOURCE.remove(node, pool)
            except KeyError:
                pass
        _resource_pools[node] = set(pools)


def start_metrics(port: int, addr: str = "127.0.0.1") -> None:
    if port:
        start_http_server(port, addr=addr)
