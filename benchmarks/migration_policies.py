"""Benchmark: a guest that dirties memory continuously, migrated under each migration policy (#15)
next to raw libvirt migrateToURI3 with the same flags and parameters, from one run.

The Linux guest (128 MiB, TCG) rewrites 4 MiB of its memory continuously (fvm.dirty=4: its
initramfs's /bin/fvm-dirtier, CPU-bound, 10-300 MiB/s under TCG); every policy caps the stream at 8 MiB/s
and allows 100 ms of downtime, so pre-copy alone never converges. Scenarios:

- timeouts:      today's flags, completion timeout 30 s (30 s per GiB, one GiB counted): aborted;
- auto-converge: VIR_MIGRATE_AUTO_CONVERGE, completion timeout 150 s;
- post-copy:     VIR_MIGRATE_POSTCOPY, migrateStartPostCopy after two pre-copy passes.

Operator: a FailoverVMMigration of the VM (wall time from creating it to its end, downtime and time
on standby from its status). Raw: a renamed copy of the same domain migrated with migrateToURI3,
the same flags and parameters (bandwidth, the target's migration address as the stream URI and
listen address), the same decisions taken by the same pure Monitor over jobStats polled every
0.5 s (abortJob / migrateStartPostCopy), and migrateSetMaxDowntime; its standby is the
migrateToURI3 call. "converged" says whether it completed.

  .venv/bin/python -m benchmarks.migration_policies --state-dir /var/lib/failovervm-sandbox -r 1
(needs a sandbox of >= 2 nodes with the operator running, and the guest image of `sandbox up`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import libvirt

from benchmarks.common import (
    MIGRATE_FLAGS,
    SandboxHandle,
    bench_main,
    ensure_namespace,
    ensure_pool,
    get_vm,
    machine,
    migrate_bounded,
    migrate_vm,
    raw_copy_xml,
    wait,
)
from benchmarks.guest_migration import linux_vm
from failovervm import API_GROUP, API_VERSION, labels
from failovervm import migrationpolicy as mp
from failovervm.kubeclient import ApiException
from failovervm_sandbox.guestimage import TCG_MIGRATION_CMDLINE

POOL = "bench-policy-pool"
POLICY = "bench-dirty"
CAP_MIBPS = 8
DOWNTIME_MS = 100
DIRTY_MIB = 4
GUEST_BOOT_SETTLE_S = 30.0
SCENARIOS: dict[str, dict[str, Any]] = {
    "timeouts": {"completionTimeoutPerGiB": 30},
    "auto-converge": {"completionTimeoutPerGiB": 150, "allowAutoConverge": True},
    "post-copy": {"completionTimeoutPerGiB": 150, "allowPostCopy": True, "postCopyAfterIterations": 2},
}


def _policy(namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "FailoverMigrationPolicy",
            "metadata": {"name": POLICY},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                     "bandwidthPerMigrationMiBps": CAP_MIBPS, "maxDowntimeMs": DOWNTIME_MS,
                     "progressTimeoutSeconds": 100, **spec}}


def _set_policy(sb: SandboxHandle, namespace: str, spec: dict[str, Any]) -> None:
    body = _policy(namespace, spec)
    try:
        cur = sb.custom.get_cluster_custom_object(API_GROUP, API_VERSION, "failovermigrationpolicies", POLICY)
        body["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        sb.custom.replace_cluster_custom_object(API_GROUP, API_VERSION, "failovermigrationpolicies", POLICY, body)
    except ApiException as exc:
        if exc.status != 404:
            raise
        sb.custom.create_cluster_custom_object(API_GROUP, API_VERSION, "failovermigrationpolicies", body)


def _operator(sb: SandboxHandle, ns: str, name: str, scenario: str, nodes: list[str]) -> dict[str, Any]:
    _, mig, wall = migrate_vm(sb, ns, name, f"{name}-{scenario}", nodes)
    st = mig["status"]
    stats = st.get("stats") or {}
    # Whatever the outcome, the VM is unlocked before the next scenario starts.
    wait(lambda: not (get_vm(sb, ns, name).get("status") or {}).get("migration"), 60, f"{name} unlocked")
    return {"wall_s": wall, "converged": st["phase"] == "Succeeded", "reason": st.get("reason") or "",
            "downtime_ms": stats.get("downtimeMs"), "standby_s": (stats.get("standbyMs") or 0) / 1000.0,
            "throttle_pct": stats.get("autoConvergeThrottlePercent"), "post_copy": bool(stats.get("postCopy"))}


def _raw(sb: SandboxHandle, template_dom: str, src: str, dst: str, policy: mp.EffectivePolicy,
         migration_address: str) -> dict[str, Any]:
    """The floor: the same migration with libvirt alone (flags, params and decisions as the agent's)."""
    conn = libvirt.open(sb.uri(src))
    name = f"raw-policy-{int(time.time() * 1000) % 100000}"
    dom = conn.defineXML(raw_copy_xml(conn.lookupByName(template_dom).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), name))
    dom.create()
    time.sleep(GUEST_BOOT_SETTLE_S)  # boots and starts dirtying
    flags = MIGRATE_FLAGS
    if policy.allow_auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if policy.allow_post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: CAP_MIBPS,
                              libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{migration_address}",
                              libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: migration_address}
    monitor, stop, seen = mp.Monitor(policy), threading.Event(), {"throttle": 0, "post_copy": False, "abort": False}

    def watch() -> None:
        downtime_set = False
        while not stop.wait(0.5):
            try:
                js = dom.jobStats()
                if not js.get("data_remaining") and not js.get("memory_total"):
                    continue
                if not downtime_set:
                    dom.migrateSetMaxDowntime(DOWNTIME_MS, 0)
                    downtime_set = True
                seen["throttle"] = max(seen["throttle"], int(js.get("auto_converge_throttle") or 0))
                d = monitor.observe(js.get("time_elapsed", 0) / 1000.0, js.get("data_remaining"),
                                    js.get("memory_iteration"))
            except libvirt.libvirtError:
                continue
            if d.action == mp.ABORT or seen["abort"]:  # as the agent: retried until libvirt takes it
                try:
                    dom.abortJob()
                    seen["abort"] = False
                except libvirt.libvirtError:
                    seen["abort"] = True
            elif d.action == mp.START_POST_COPY:
                try:
                    dom.migrateStartPostCopy(0)
                except libvirt.libvirtError as exc:  # asked again at the next sample, as the agent
                    monitor.switch_failed(str(exc))
                    continue
                monitor.switched()
                seen["post_copy"] = True

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    converged, downtime = True, None
    try:
        migrate_bounded(dom, sb.uri(dst), params, flags)
    except libvirt.libvirtError:
        converged = False
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        watcher.join(timeout=5)
        for where in (dst, src):  # wherever the copy ended up (both, after a migration that never ended)
            c = libvirt.open(sb.uri(where))
            try:
                d = c.lookupByName(name)
                if converged and where == dst:
                    downtime = d.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED).get("downtime")
                d.destroy()
                d.undefine()
            except libvirt.libvirtError:
                pass
            finally:
                c.close()
        conn.close()
    return {"wall_s": wall, "converged": converged, "downtime_ms": downtime, "standby_s": wall,
            "throttle_pct": seen["throttle"] or None, "post_copy": seen["post_copy"]}


def run(state_dir: Path, rounds: int = 1, namespace: str = "bench-policies",
        scenarios: tuple[str, ...] = tuple(SCENARIOS)) -> dict[str, Any]:
    sb = SandboxHandle(state_dir)
    nodes = [h["node"] for h in sb.data["libvirt"]][:2]
    images = Path(sb.data["images_dir"]) / namespace  # the namespace's own directory (ensure_namespace)
    pfs = [f"sbxpf{p}" for p in range(int(sb.data.get("pfs_per_node", 1)))]
    ensure_namespace(sb, namespace)
    ensure_pool(sb, POOL, pfs)
    body = linux_vm("dirty", namespace, images, POOL)
    body["spec"]["cmdline"] += f" fvm.dirty={DIRTY_MIB} {TCG_MIGRATION_CMDLINE}"
    body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": nodes[0]}
    results: dict[str, Any] = {}
    try:
        sb.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "failovervms", body)
        wait(lambda: (get_vm(sb, namespace, "dirty").get("status") or {}).get("phase") == "Running", 180,
             "the dirtying guest running", interval=1.0)
        time.sleep(GUEST_BOOT_SETTLE_S)
        sb.custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "failovervms", "dirty",
                                                 {"spec": {"nodeSelector": None}})
        for scenario in scenarios:
            _set_policy(sb, namespace, SCENARIOS[scenario])
            op = [_operator(sb, namespace, "dirty", f"{scenario}-{i}", nodes) for i in range(rounds)]
            vm = get_vm(sb, namespace, "dirty")
            src = vm["status"]["nodeName"]
            dst = next(n for n in nodes if n != src)
            addr = sb.core.read_node(dst)["metadata"]["annotations"][labels.MIGRATION_ADDRESS]
            policy = mp.effective_policy(_policy(namespace, SCENARIOS[scenario]), 128 << 20)
            raw = [_raw(sb, vm["status"]["domain"]["name"], src, dst, policy, addr) for _ in range(rounds)]
            results[scenario] = {"operator": op, "raw": raw}
    finally:
        try:
            sb.custom.delete_cluster_custom_object(API_GROUP, API_VERSION, "failovermigrationpolicies", POLICY)
        except ApiException:
            pass
        sb.core.delete_namespace(namespace)
        wait(lambda: namespace not in {n["metadata"]["name"] for n in sb.core.list_namespace()["items"]}, 180,
             f"namespace {namespace} deleted", interval=1.0)
    return {"benchmark": "migration_policies", "rounds": rounds, "bandwidth_mibps": CAP_MIBPS, "dirty_mib": DIRTY_MIB,
            "max_downtime_ms": DOWNTIME_MS,
            "scenarios": results, "machine": machine()}


def _fmt(v: Any, unit: str, spec: str = ".1f") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def _report(r: dict[str, Any]) -> None:
    print(f"dirtying guest (128 MiB, {r['dirty_mib']} MiB rewritten continuously, TCG), stream capped at "
          f"{r['bandwidth_mibps']} MiB/s, max downtime {r.get('max_downtime_ms')} ms ({r['machine']['cpu']})")
    print(f"{'policy':<15}{'':<10}{'wall':>8}{'downtime':>10}{'standby':>9}{'throttle':>10}  converged")
    for scenario, res in r["scenarios"].items():
        for who in ("operator", "raw"):
            for one in res[who]:
                conv = "yes" if one["converged"] else f"no ({one.get('reason') or 'aborted'})"
                if one.get("post_copy"):
                    conv += ", post-copy"
                print(f"{scenario:<15}{who:<10}{_fmt(one['wall_s'], 's'):>8}"
                      f"{_fmt(one['downtime_ms'], 'ms', '.0f'):>10}{_fmt(one['standby_s'], 's'):>9}"
                      f"{_fmt(one['throttle_pct'], '%', '.0f'):>10}  {conv}")


def main() -> None:
    bench_main(__doc__, run, ("-r", "--rounds"), 1, _report)


if __name__ == "__main__":
    main()
