"""Benchmark: recovering N VMs from a failed node, next to raw libvirt doing the same restarts.

  operator: N VMs run on one node; the node fails (`sandbox node-down`: QEMU killed, libvirtd,
            agent and heartbeat stopped); the clock starts when the node is tainted
            node.kubernetes.io/out-of-service and stops when all N are Running on other nodes
            (release, placement with fresh VFs, define + start by the new nodes' agents);
  raw:      define + start the same N domain XMLs (the ones the operator had generated, renamed)
            with libvirt-python, spread round-robin over the surviving nodes, one thread per node
            (as the operator's agents do it, in parallel per node).
Prints both and their ratio, from the same run.

  .venv/bin/python -m benchmarks.node_recovery --state-dir /var/lib/failovervm-sandbox -n 6
(needs a sandbox of >= 2 nodes with the operator running, and >= N free VFs on the first node,
e.g. `failovervm sandbox up --nodes 3 --pfs-per-node 2 --vfs-per-node 8`).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import libvirt

from benchmarks.common import (
    HOLD_TAINT,
    SandboxHandle,
    bench_main,
    ensure_namespace,
    ensure_pool,
    halt_vm,
    list_vms,
    machine,
    raw_copy_xml,
    set_taint,
    summary,
    wait,
)
from failovervm import API_GROUP, API_VERSION
from failovervm.nodehealth import OUT_OF_SERVICE_TAINT

POOL = "bench-recovery-pool"
FENCE = {"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}


def _sandbox(state_dir: Path, action: str, node: str) -> None:
    res = subprocess.run([sys.executable, "-m", "failovervm.cli", "sandbox", action, "--state-dir", str(state_dir),
                          node], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"sandbox {action} {node} failed: {res.stderr}")


def _raw(uris: list[str], xmls: list[str]) -> float:
    """Wall time until every copy has started, round-robin over the nodes, in parallel per node."""
    shares = {uri: xmls[i::len(uris)] for i, uri in enumerate(uris)}
    started = threading.Barrier(len(uris) + 1)
    done: list[float] = []

    def work(uri: str) -> None:
        started.wait()
        conn = libvirt.open(uri)
        try:
            t0 = time.perf_counter()
            for xml in shares[uri]:
                conn.defineXML(raw_copy_xml(xml, f"raw-recovery-{uuid.uuid4().hex[:8]}")).create()
            done.append(time.perf_counter() - t0)
        finally:
            _remove_raw(conn)
            conn.close()

    threads = [threading.Thread(target=work, args=(u,)) for u in uris]
    for t in threads:
        t.start()
    started.wait()
    for t in threads:
        t.join()
    if len(done) != len(uris):
        raise RuntimeError("a raw restart failed")
    return max(done)


def _remove_raw(conn: libvirt.virConnect) -> None:
    for dom in conn.listAllDomains():
        if dom.name().startswith("raw-recovery-"):
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError:
                pass


def run(state_dir: Path, n: int = 6, namespace: str = "bench-recovery") -> dict[str, Any]:
    sb = SandboxHandle(state_dir)
    nodes = [h["node"] for h in sb.data["libvirt"]]
    failing, others = nodes[0], nodes[1:]
    image = str(Path(sb.data["images_dir"]) / namespace / "halt.img")
    pfs = [f"sbxpf{p}" for p in range(int(sb.data.get("pfs_per_node", 1)))]
    ensure_namespace(sb, namespace)
    ensure_pool(sb, POOL, pfs)
    for o in others:
        set_taint(sb, o, HOLD_TAINT, True)
    try:
        for i in range(n):
            sb.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "failovervms",
                                                      halt_vm(f"r{i}", namespace, image, POOL))
        wait(lambda: sum(1 for v in list_vms(sb, namespace) if (v.get("status") or {}).get("phase") == "Running"
                         and v["status"].get("nodeName") == failing) == n, 180, f"{n} VMs running on {failing}")
    finally:
        for o in others:
            set_taint(sb, o, HOLD_TAINT, False)
    conn = libvirt.open(sb.uri(failing))
    try:
        xmls = [conn.lookupByName(v["status"]["domain"]["name"]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                for v in list_vms(sb, namespace)]
    finally:
        conn.close()
    t_raw = _raw([sb.uri(o) for o in others], xmls)

    _sandbox(state_dir, "node-down", failing)
    per_vm: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        set_taint(sb, failing, FENCE, True)

        def recovered() -> bool:
            for v in list_vms(sb, namespace):
                st = v.get("status") or {}
                if st.get("phase") == "Running" and st.get("nodeName") not in (None, failing):
                    per_vm.setdefault(v["metadata"]["name"], time.perf_counter() - t0)
            return len(per_vm) == n

        wait(recovered, 300, f"{n} VMs running again elsewhere", interval=0.1)
        t_op = time.perf_counter() - t0
    finally:
        _sandbox(state_dir, "node-up", failing)
        set_taint(sb, failing, FENCE, False)
    sb.core.delete_namespace(namespace)
    wait(lambda: not any(ns["metadata"]["name"] == namespace for ns in sb.core.list_namespace()["items"]), 180,
         f"namespace {namespace} deleted")
    return {
        "benchmark": "node_recovery",
        "n": n,
        "operator_s": t_op,
        "operator_per_vm_s": summary(list(per_vm.values())),
        "raw_define_start_s": t_raw,
        "ratio": t_op / t_raw,
        "machine": machine(),
    }


def _report(r: dict[str, Any]) -> None:
    p = r["operator_per_vm_s"]
    print(f"recover {r['n']} VMs from a failed node ({r['machine']['cpu']})")
    print(f"  operator: out-of-service taint -> all running elsewhere  {r['operator_s']:8.2f} s"
          f"   (per VM p50 {p['p50']:.2f} s, p95 {p['p95']:.2f} s)")
    print(f"  raw libvirt: define + start them, parallel per node    {r['raw_define_start_s']:8.2f} s")
    print(f"  ratio operator / raw                                   {r['ratio']:8.2f}")


def main() -> None:
    bench_main(__doc__, run, ("-n",), 6, _report)


if __name__ == "__main__":
    main()
