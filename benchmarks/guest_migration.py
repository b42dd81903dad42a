"""Benchmark: live migration of a real Linux guest (FailoverReady) next to the halt-sector VM.

For each guest kind, R operator migrations (FailoverVMMigration, ping-pong between two nodes:
wall time from creating the object to Succeeded, downtime from libvirt's completed-job stats)
next to R raw libvirt migrateToURI3 calls of a copy of the same domain, same run, same nodes.
Both guests get 128 MiB; the Linux guest runs under TCG (nested KVM hangs Linux here), the
halt-sector guest under KVM when usable, as the sandbox runs them.

  .venv/bin/python -m benchmarks.guest_migration --state-dir /var/lib/failovervm-sandbox -r 5
(needs a sandbox of >= 2 nodes with the operator running, and the guest image that
`failovervm sandbox up` builds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import (
    SandboxHandle,
    bench_main,
    ensure_namespace,
    ensure_pool,
    get_vm,
    halt_vm,
    machine,
    migrate_vm,
    raw_migration,
    summary,
    wait,
)
from failovervm import API_GROUP, API_VERSION
from failovervm_sandbox.guestimage import GUEST_CMDLINE, GUEST_INITRD, GUEST_KERNEL

POOL = "bench-guest-pool"
GUEST_BOOT_SETTLE_S = 15.0  # the raw copy of the Linux guest boots before it is migrated


def _cond(obj: dict[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def linux_vm(name: str, namespace: str, images: Path, pool: str) -> dict[str, Any]:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "FailoverVM",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"running": True, "cpu": 1, "memory": "128Mi", "accel": "tcg",
                     "kernel": str(images / GUEST_KERNEL), "initrd": str(images / GUEST_INITRD),
                     "cmdline": f"{GUEST_CMDLINE} fvm.ip=10.77.9.1/24",
                     "terminationGracePeriodSeconds": 0, "network": {"pool": pool}}}


def _operator_migrations(sb: SandboxHandle, ns: str, name: str, nodes: list[str], rounds: int
                         ) -> tuple[list[float], list[float]]:
    walls, downs = [], []
    for i in range(rounds):
        there, mig, wall = migrate_vm(sb, ns, name, f"{name}-m{i}", nodes, timeout=180)
        walls.append(wall)
        st = mig["status"]
        if st["phase"] != "Succeeded":
            raise RuntimeError(f"migration {mig['metadata']['name']} {st['phase']}: {st.get('message')}")
        downs.append(float((st.get("stats") or {}).get("downtimeMs", 0)))
        # The VM's status moves to the target right after; wait so the next round starts clean.
        wait(lambda there=there: (get_vm(sb, ns, name).get("status") or {}).get("nodeName") == there
             and not get_vm(sb, ns, name)["status"].get("migration"), 60, f"{name} settled on {there}")
    return walls, downs


def run(state_dir: Path, rounds: int = 5, namespace: str = "bench-guest") -> dict[str, Any]:
    sb = SandboxHandle(state_dir)
    nodes = [h["node"] for h in sb.data["libvirt"]][:2]
    images = Path(sb.data["images_dir"]) / namespace
    pfs = [f"sbxpf{p}" for p in range(int(sb.data.get("pfs_per_node", 1)))]
    ensure_namespace(sb, namespace)
    ensure_pool(sb, POOL, pfs)
    halt = halt_vm("halt", namespace, str(images / "halt.img"), POOL)
    halt["spec"]["memory"] = "128Mi"
    pin = {"nodeSelector": {"kubernetes.io/hostname": nodes[0]}}
    results: dict[str, Any] = {}
    try:
        for body in (linux_vm("linux", namespace, images, POOL), halt):
            body["spec"].update(pin)
            sb.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "failovervms", body)
        for kind, want in (("linux", "True"), ("halt", "False")):
            wait(lambda kind=kind, want=want: _cond(get_vm(sb, namespace, kind), "FailoverReady") == want, 180,
                 f"{kind} FailoverReady={want}", interval=1.0)
        for kind in ("linux", "halt"):
            sb.custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "failovervms", kind,
                                                     {"spec": {"nodeSelector": None}})
            walls, downs = _operator_migrations(sb, namespace, kind, nodes, rounds)
            vm = get_vm(sb, namespace, kind)
            failover = _cond(vm, "FailoverReady")
            src = vm["status"]["nodeName"]
            dst = next(n for n in nodes if n != src)
            raw_t, raw_d = raw_migration(sb, src, dst, vm["status"]["domain"]["name"], rounds,
                                         settle=GUEST_BOOT_SETTLE_S if kind == "linux" else 0.0)
            results[kind] = {
                "failover_ready_after": failover,
                "operator_wall_s": summary(walls), "operator_downtime_ms": summary(downs),
                "raw_wall_s": summary(raw_t), "raw_downtime_ms": summary([float(d) for d in raw_d]),
                "ratio_wall_p50": summary(walls)["p50"] / summary(raw_t)["p50"],
            }
    finally:
        sb.core.delete_namespace(namespace)
        # Gone before returning, so that the next run can create it again.
        wait(lambda: namespace not in {n["metadata"]["name"] for n in sb.core.list_namespace()["items"]}, 180,
             f"namespace {namespace} deleted", interval=1.0)
    return {"benchmark": "guest_migration", "rounds": rounds, "guests": results, "machine": machine()}


def _report(r: dict[str, Any]) -> None:
    print(f"live migration, {r['rounds']} rounds per guest, 128 MiB ({r['machine']['cpu']})")
    print(f"{'guest':<7}{'':<10}{'wall p50':>10}{'wall p95':>10}{'downtime p50':>14}{'p95':>7}  FailoverReady")
    for kind, g in r["guests"].items():
        for who, wall, down in (("operator", g["operator_wall_s"], g["operator_downtime_ms"]),
                                ("raw", g["raw_wall_s"], g["raw_downtime_ms"])):
            fr = g["failover_ready_after"] if who == "operator" else ""
            print(f"{kind:<7}{who:<10}{wall['p50']:>9.2f}s{wall['p95']:>9.2f}s{down['p50']:>12.0f}ms"
                  f"{down['p95']:>5.0f}ms  {fr}")
        print(f"{kind:<7}ratio operator/raw wall p50: {g['ratio_wall_p50']:.2f}")


def main() -> None:
    bench_main(__doc__, run, ("-r", "--rounds"), 5, _report)


if __name__ == "__main__":
    main()
