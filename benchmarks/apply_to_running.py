"""Benchmark: latency from `apply` of a FailoverVM to phase Running, next to raw libvirt.

For each of N VMs, one after the other on the real QEMU sandbox:
  operator: create the FailoverVM, watch it until status.phase == Running;
  raw:      on the same node, define + start the same domain XML with libvirt-python
            (the XML the operator generated, renamed), then destroy + undefine it.
Prints p50/p95 of both and the ratio of the p50s, from the same run.

  .venv/bin/python -m benchmarks.apply_to_running --state-dir /var/lib/failovervm-sandbox -n 20
(the sandbox must run with the operator: `failovervm sandbox up`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import libvirt
from kubernetes import watch

from benchmarks.common import (
    SandboxHandle,
    bench_main,
    ensure_namespace,
    ensure_pool,
    halt_vm,
    machine,
    raw_copy_xml,
    summary,
)
from failovervm import API_GROUP, API_VERSION

POOL = "bench-pool"


def _operator_once(sb: SandboxHandle, ns: str, name: str, image: str) -> tuple[float, dict[str, Any]]:
    w = watch.Watch()
    t0 = time.perf_counter()
    sb.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms",
                                              halt_vm(name, ns, image, POOL))
    for ev in w.stream(sb.custom.list_namespaced_custom_object, API_GROUP, API_VERSION, ns, "failovervms",
                       field_selector=f"metadata.name={name}", timeout_seconds=120):
        obj = ev["object"]
        if (obj.get("status") or {}).get("phase") == "Running":
            elapsed = time.perf_counter() - t0
            w.stop()
            return elapsed, obj
    raise RuntimeError(f"{ns}/{name} did not reach Running")


def _raw_once(uri: str, xml: str) -> float:
    conn = libvirt.open(uri)
    try:
        t0 = time.perf_counter()
        dom = conn.defineXML(xml)
        dom.create()
        elapsed = time.perf_counter() - t0
        dom.destroy()
        dom.undefine()
        return elapsed
    finally:
        conn.close()


def _raw_xml(uri: str, domain: str) -> str:
    conn = libvirt.open(uri)
    try:
        return raw_copy_xml(conn.lookupByName(domain).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), f"raw-{domain}"[:60])
    finally:
        conn.close()


def _delete_and_wait(sb: SandboxHandle, ns: str, name: str) -> None:
    sb.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms", name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            sb.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms", name)
        except Exception:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{ns}/{name} was not deleted")


def run(state_dir: Path, n: int = 20, namespace: str = "bench-apply") -> dict[str, Any]:
    sb = SandboxHandle(state_dir)
    image = str(Path(sb.data["images_dir"]) / "halt.img")
    ensure_namespace(sb, namespace)
    ensure_pool(sb, POOL, ["sbxpf0"])
    op, raw = [], []
    for i in range(n):
        name = f"bench-{i}"
        elapsed, obj = _operator_once(sb, namespace, name, image)
        op.append(elapsed)
        node = obj["status"]["nodeName"]
        raw.append(_raw_once(sb.uri(node), _raw_xml(sb.uri(node), obj["status"]["domain"]["name"])))
        _delete_and_wait(sb, namespace, name)
    o, r = summary(op), summary(raw)
    return {"benchmark": "apply_to_running", "n": n, "operator_s": o, "raw_libvirt_s": r,
            "ratio_p50": o["p50"] / r["p50"], "ratio_p95": o["p95"] / r["p95"], "machine": machine()}


def _report(res: dict[str, Any]) -> None:
    o, r = res["operator_s"], res["raw_libvirt_s"]
    print(f"apply -> Running over {res['n']} VMs (sandbox, real QEMU, {res['machine']['cpu']})")
    print(f"{'':24}{'p50 (s)':>10}{'p95 (s)':>10}")
    print(f"{'operator (apply->Running)':24}{o['p50']:>10.3f}{o['p95']:>10.3f}")
    print(f"{'raw libvirt define+start':24}{r['p50']:>10.3f}{r['p95']:>10.3f}")
    print(f"{'ratio operator/raw':24}{res['ratio_p50']:>10.2f}{res['ratio_p95']:>10.2f}")


def main() -> None:
    bench_main(__doc__, run, ("-n",), 20, _report)


if __name__ == "__main__":
    main()
