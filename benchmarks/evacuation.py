"""Benchmark: evacuating N VMs from one node (cordon -> every VM running elsewhere), next to the
ideal ceil(N / per-node limit) x t(raw libvirt migration of one such VM), and per-migration
downtime p50/p95 from libvirt's completed-job statistics. Same run, same sandbox.

  .venv/bin/python -m benchmarks.evacuation --state-dir /var/lib/failovervm-sandbox -n 10
(needs a sandbox of >= 2 nodes with >= N VFs on the first node, e.g.
 `failovervm sandbox up --nodes 3 --pfs-per-node 2 --vfs-per-node 8`, with the operator running).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HOLD_TAINT,
    SandboxHandle,
    bench_main,
    ensure_namespace,
    ensure_pool,
    halt_vm,
    list_vms,
    machine,
    raw_migration,
    set_taint,
    summary,
    wait,
)
from failovervm import API_GROUP, API_VERSION

POOL = "bench-evac-pool"


def _cordon(sb: SandboxHandle, node: str, on: bool) -> None:
    sb.core.patch_node(node, {"spec": {"unschedulable": on or None}})


def run(state_dir: Path, n: int = 10, namespace: str = "bench-evac", raw_rounds: int = 3) -> dict[str, Any]:
    sb = SandboxHandle(state_dir)
    nodes = [h["node"] for h in sb.data["libvirt"]]
    src, others = nodes[0], nodes[1:]
    per_node = 2  # the controller's default parallelOutboundMigrationsPerNode
    image = str(Path(sb.data["images_dir"]) / namespace / "halt.img")
    pfs = [f"sbxpf{p}" for p in range(int(sb.data.get("pfs_per_node", 1)))]
    ensure_namespace(sb, namespace)
    ensure_pool(sb, POOL, pfs)
    for o in others:
        set_taint(sb, o, HOLD_TAINT, True)
    try:
        for i in range(n):
            sb.custom.create_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, "failovervms", halt_vm(f"e{i}", namespace, image, POOL)
            )
        wait(
            lambda: (
                sum(
                    1
                    for v in list_vms(sb, namespace)
                    if (v.get("status") or {}).get("phase") == "Running" and v["status"].get("nodeName") == src
                )
                == n
            ),
            180,
            f"{n} VMs running on {src}",
        )
    finally:
        for o in others:
            set_taint(sb, o, HOLD_TAINT, False)
    template = list_vms(sb, namespace)[0]["status"]["domain"]["name"]
    raw_times, raw_down = raw_migration(sb, src, others[0], template, raw_rounds)
    t_raw = sorted(raw_times)[len(raw_times) // 2]
    t0 = time.perf_counter()
    _cordon(sb, src, True)
    try:
        wait(
            lambda: all(
                (v.get("status") or {}).get("nodeName") not in (None, src) and v["status"].get("phase") == "Running"
                for v in list_vms(sb, namespace)
            ),
            600,
            "evacuation",
        )
        evac = time.perf_counter() - t0
    finally:
        _cordon(sb, src, False)

    def migrations() -> list[dict[str, Any]]:
        return list(sb.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace,
                                                            "failovervmmigrations")["items"])

    # The agent moves the VM's status before it marks the migration Succeeded with its stats: wait
    # for every migration to end, or the last one's downtime is not there yet.
    wait(lambda: all((m.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Aborted")
                     for m in migrations()), 60, "migrations finished")
    migs = {"items": migrations()}
    downtimes = [
        float(m["status"]["stats"]["downtimeMs"])
        for m in migs["items"]
        if (m.get("status") or {}).get("phase") == "Succeeded"
        and (m["status"].get("stats") or {}).get("downtimeMs") is not None
    ]
    ideal = math.ceil(n / per_node) * t_raw
    sb.core.delete_namespace(namespace)
    return {
        "benchmark": "evacuation",
        "n": n,
        "per_node_limit": per_node,
        "evacuation_s": evac,
        "raw_migration_s": summary(raw_times),
        "ideal_s": ideal,
        "ratio_to_ideal": evac / ideal,
        "downtime_ms": summary(downtimes),
        "raw_downtime_ms": summary([float(d) for d in raw_down]),
        "machine": machine(),
    }


def _report(r: dict[str, Any]) -> None:
    print(f"evacuate {r['n']} VMs from one node (per-node limit {r['per_node_limit']}; {r['machine']['cpu']})")
    print(f"  operator: cordon -> all running elsewhere   {r['evacuation_s']:8.2f} s")
    print(f"  raw libvirt migrateToURI3 of one VM (p50)   {r['raw_migration_s']['p50']:8.2f} s")
    print(f"  ideal ceil(N/{r['per_node_limit']}) x raw                       {r['ideal_s']:8.2f} s")
    print(f"  ratio operator / ideal                      {r['ratio_to_ideal']:8.2f}")
    d, rd = r["downtime_ms"], r["raw_downtime_ms"]
    print(f"  downtime p50/p95 (operator migrations)      {d['p50']:.0f} / {d['p95']:.0f} ms")
    print(f"  downtime p50/p95 (raw migrations)           {rd['p50']:.0f} / {rd['p95']:.0f} ms")


def main() -> None:
    bench_main(__doc__, run, ("-n",), 10, _report)


if __name__ == "__main__":
    main()
