"""Benchmark: latency from `apply` of a FailoverVM to phase Running, next to raw libvirt.

For each of N VMs, one after the other on the real QEMU sandbox:
  operator: create the FailoverVM, watch it until status.phase == Running;
  raw:      on the same node, define + start the same domain XML with libvirt-python
            (the XML the operator generated, renamed), then destroy + undefine it.
Prints p50/p95 of both and the ratio of the p50s, from the same run.

With --phases, watches of the VM, its pod, its VFClaim and the namespace's Events stamp every step
of the operator's path with the time it reached this process, and the report adds where the time
goes: FailoverVM created -> VM pod created -> kube-scheduler bound it -> VFClaim created -> status
Scheduled (node label, agent finalizer) -> agent Starting -> Running, p50/p95 of each step.

  .venv/bin/python -m benchmarks.apply_to_running --state-dir /var/lib/failovervm-sandbox -n 20 [--phases]
(the sandbox must run with the operator: `failovervm sandbox up`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import libvirt

from benchmarks.common import (
    SandboxHandle,
    Timeline,
    bench_main,
    ensure_namespace,
    ensure_pool,
    halt_vm,
    machine,
    raw_copy_xml,
    summary,
)
from failovervm import API_GROUP, API_VERSION, kubeclient, labels

POOL = "bench-pool"


def _operator_once(sb: SandboxHandle, ns: str, name: str, image: str) -> tuple[float, float, dict[str, Any]]:
    """(seconds from create to Running, the create's start on the perf_counter clock, the VM)."""
    w = kubeclient.Watch(sb.api)
    t0 = time.perf_counter()
    sb.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms",
                                              halt_vm(name, ns, image, POOL))
    for ev in w.stream(kubeclient.custom_path(API_GROUP, API_VERSION, "failovervms", namespace=ns),
                       field_selector=f"metadata.name={name}", timeout_seconds=120):
        obj = ev["object"]
        if (obj.get("status") or {}).get("phase") == "Running":
            elapsed = time.perf_counter() - t0
            w.stop()
            return elapsed, t0, obj
    raise RuntimeError(f"{ns}/{name} did not reach Running")


# The steps of --phases, in order: (name, kind watched, test of a change of it for the VM of uid `u`).
def _vm_pod_of(u: str) -> Any:
    return lambda typ, o: ((o["metadata"].get("labels") or {}).get(labels.VM_UID_LABEL) == u
                           and (o["metadata"].get("labels") or {}).get(labels.ROLE_LABEL) == labels.ROLE_RUNNING)


def _vm_of(u: str, test: Any) -> Any:
    return lambda typ, o: o["metadata"].get("uid") == u and test(o)


STEPS: tuple[tuple[str, str, Any], ...] = (
    ("VM pod created", "pods", lambda u: _vm_pod_of(u)),
    ("pod bound by kube-scheduler", "pods", lambda u: lambda typ, o: _vm_pod_of(u)(typ, o)
     and bool((o.get("spec") or {}).get("nodeName"))),
    ("VFClaim created", "vfclaims", lambda u: lambda typ, o: (o["metadata"].get("labels") or {}).get(
        labels.VM_UID_LABEL) == u),
    ("status Scheduled", "failovervms", lambda u: _vm_of(u, lambda o: bool((o.get("status") or {}).get("nodeName")))),
    ("node label + agent finalizer", "failovervms", lambda u: _vm_of(
        u, lambda o: labels.VM_NODE in (o["metadata"].get("labels") or {})
        and labels.AGENT_FINALIZER in (o["metadata"].get("finalizers") or []))),
    ("agent: Starting", "failovervms", lambda u: _vm_of(u, lambda o: (o.get("status") or {}).get("phase")
                                                         == "Starting")),
    ("Running", "failovervms", lambda u: _vm_of(u, lambda o: (o.get("status") or {}).get("phase") == "Running")),
)


def phases_of(tl: Timeline, uid: str, t0: float) -> dict[str, float | None]:
    """Seconds from the create of the VM of `uid` (at `t0`) to each step's first sighting."""
    out: dict[str, float | None] = {}
    for step, kind, test in STEPS:
        t = tl.first(kind, test(uid))
        out[step] = None if t is None else t - t0
    return out


def _phase_summary(per_vm: list[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """p50/p95 of each step's own duration (from the step before it; the first from the create)."""
    out = {}
    previous: str | None = None
    for step, _kind, _test in STEPS:
        deltas = [p[step] - (p[previous] if previous else 0.0)  # type: ignore[operator]
                  for p in per_vm if p[step] is not None and (previous is None or p[previous] is not None)]
        out[step] = summary(deltas)
        previous = step
    return out


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


def run(state_dir: Path, n: int = 20, namespace: str = "bench-apply", phases: bool = False) -> dict[str, Any]:
    sb = SandboxHandle(state_dir)
    image = str(Path(sb.data["images_dir"]) / namespace / "halt.img")
    ensure_namespace(sb, namespace)
    ensure_pool(sb, POOL, ["sbxpf0"])
    tl = Timeline(sb, namespace).start() if phases else None
    op, raw, per_vm = [], [], []
    try:
        for i in range(n):
            name = f"bench-{i}"
            elapsed, t0, obj = _operator_once(sb, namespace, name, image)
            op.append(elapsed)
            node = obj["status"]["nodeName"]
            raw.append(_raw_once(sb.uri(node), _raw_xml(sb.uri(node), obj["status"]["domain"]["name"])))
            if tl is not None:
                per_vm.append(phases_of(tl, obj["metadata"]["uid"], t0))
            _delete_and_wait(sb, namespace, name)
    finally:
        if tl is not None:
            tl.stop()
    o, r = summary(op), summary(raw)
    res = {"benchmark": "apply_to_running", "n": n, "operator_s": o, "raw_libvirt_s": r,
           "ratio_p50": o["p50"] / r["p50"], "ratio_p95": o["p95"] / r["p95"], "machine": machine()}
    if tl is not None:
        res["phases_s"] = _phase_summary(per_vm)
        res["phases_per_vm_s"] = per_vm
    return res


def _report(res: dict[str, Any]) -> None:
    o, r = res["operator_s"], res["raw_libvirt_s"]
    print(f"apply -> Running over {res['n']} VMs (sandbox, real QEMU, {res['machine']['cpu']})")
    print(f"{'':24}{'p50 (s)':>10}{'p95 (s)':>10}")
    print(f"{'operator (apply->Running)':24}{o['p50']:>10.3f}{o['p95']:>10.3f}")
    print(f"{'raw libvirt define+start':24}{r['p50']:>10.3f}{r['p95']:>10.3f}")
    print(f"{'ratio operator/raw':24}{res['ratio_p50']:>10.2f}{res['ratio_p95']:>10.2f}")
    if "phases_s" in res:
        print("where the operator's time goes (each step from the one before; watch arrival times):")
        for step, s in res["phases_s"].items():
            print(f"  {step:34}{s['p50']:>10.3f}{s['p95']:>10.3f}")


def main() -> None:
    bench_main(__doc__, run, ("-n",), 20, _report,
               (("--phases", "also time each step from apply to Running (watches; adds a little load)"),))


if __name__ == "__main__":
    main()
