"""Benchmark: kube-scheduler's binding latency for a VM pod, next to a plain pod of the same requests.

For each of N rounds, one after the other on the sandbox (real kube-scheduler, default profile):
  VM pod:    create a FailoverVM; the controller creates its unbound VM pod; time from the pod's
             creation to its binding (spec.nodeName set by kube-scheduler); wait until the VM runs;
  plain pod: create, directly, a pod with that VM pod's spec (same requests and limits, CPU, memory
             and vf.failovervm.io/<pool>, same tolerations, no nodeName), but none of its labels or
             owner (no controller acts on it); time from its creation to its binding; delete it.
Then the VM is deleted. Each pod is timed twice, the same way for both kinds:
  kube-scheduler's own figure: from the pod entering its scheduling queue to the pod bound, read
             from its metrics (the growth of scheduler_pod_scheduling_sli_duration_seconds_sum while
             this one pod is scheduled; /metrics with the sandbox's admin certificate), and the
             number of scheduling attempts;
  creation -> binding as a watcher sees it: from the watch event that shows the pod created to the
             one that shows it bound, as they reach this process (the watch's own delay cancels
             out; the benchmark's thread is blocked in I/O meanwhile, so it does not delay the
             watch's thread).
Prints p50/p95 of both kinds and the ratio of the p50s, from the same run.

  .venv/bin/python -m benchmarks.scheduler_binding --state-dir /var/lib/failovervm-sandbox -n 20
(the sandbox must run with the operator: `failovervm sandbox up`).
"""

from __future__ import annotations

import copy
import re
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.apply_to_running import POOL
from benchmarks.common import (
    SandboxHandle,
    Timeline,
    bench_main,
    ensure_namespace,
    ensure_pool,
    halt_vm,
    machine,
    summary,
    wait,
)
from failovervm import API_GROUP, API_VERSION, labels

PLAIN_LABEL = "bench.failovervm.io/plain-pod"
SLI = "scheduler_pod_scheduling_sli_duration_seconds"
ATTEMPTS = "scheduler_pod_scheduling_attempts"


class SchedulerMetrics:
    """kube-scheduler's /metrics (HTTPS, the sandbox CA; the admin client certificate, which its
    delegated authorization allows): the sum and count of a histogram, over all its labels."""

    def __init__(self, sb: SandboxHandle) -> None:
        pki = sb.state_dir / "pki"
        self.url = f"https://127.0.0.1:{sb.data['scheduler']['port']}/metrics"
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def histogram(self, name: str) -> tuple[float, float]:
        with urllib.request.urlopen(self.url, context=self.ctx, timeout=10) as resp:
            text = resp.read().decode()
        total = {"sum": 0.0, "count": 0.0}
        for m in re.finditer(rf"^{name}_(sum|count)(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE):
            total[m.group(1)] += float(m.group(2))
        return total["sum"], total["count"]

    def one_more(self, before: tuple[float, float], what: str) -> float | None:
        """What the histogram's sum grew by once its count grew by exactly one (None: by more, another
        pod was scheduled meanwhile)."""
        found: list[tuple[float, float]] = []

        def counted() -> bool:
            found[:] = [self.histogram(SLI)]
            return found[0][1] > before[1]

        wait(counted, 10, f"kube-scheduler's metrics to count {what}", 0.02)
        return found[0][0] - before[0] if found[0][1] == before[1] + 1 else None


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def _bound(obj: dict[str, Any]) -> bool:
    return bool((obj.get("spec") or {}).get("nodeName"))


def _binding(tl: Timeline, match: Any, what: str, timeout: float = 60) -> tuple[float, float, dict[str, Any]]:
    """(arrival of the pod's creation, arrival of its binding, the bound pod) of the pod `match` accepts."""
    found: list[tuple[float, str, dict[str, Any]]] = []

    def bound() -> bool:
        found[:] = tl.of("pods", lambda typ, o: match(o) and _bound(o))
        return bool(found)

    wait(bound, timeout, f"{what} bound", 0.05)
    created = tl.first("pods", lambda typ, o: typ == "ADDED" and match(o))
    if created is None:
        raise RuntimeError(f"the creation of {what} was not seen")
    return created, found[0][0], found[0][2]


def _attempts(m: SchedulerMetrics, before: tuple[float, float]) -> float:
    return m.histogram(ATTEMPTS)[0] - before[0]


def plain_pod(vm_pod: dict[str, Any], name: str) -> dict[str, Any]:
    """A pod with `vm_pod`'s spec (requests, limits, tolerations, container), unbound, and none of its
    labels, annotations or owner: nothing but kube-scheduler acts on it."""
    spec = copy.deepcopy(vm_pod["spec"])
    for key in ("nodeName", "priority", "preemptionPolicy"):  # the last two: admission computes them again
        spec.pop(key, None)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": vm_pod["metadata"]["namespace"], "labels": {PLAIN_LABEL: name}},
        "spec": spec,
    }


def _vm_gone(sb: SandboxHandle, ns: str, name: str) -> bool:
    try:
        sb.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms", name)
    except Exception:
        return True
    return False


def _phase(sb: SandboxHandle, ns: str, name: str) -> str | None:
    obj = sb.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms", name)
    return (obj.get("status") or {}).get("phase")  # type: ignore[no-any-return]


def run(state_dir: Path, n: int = 20, namespace: str = "bench-binding") -> dict[str, Any]:
    sb = SandboxHandle(state_dir)
    image = str(Path(sb.data["images_dir"]) / namespace / "halt.img")
    ensure_namespace(sb, namespace)
    ensure_pool(sb, POOL, ["sbxpf0"])
    metrics = SchedulerMetrics(sb)
    tl = Timeline(sb, namespace, ("pods",)).start()
    seen: dict[str, list[float]] = {"vm": [], "plain": []}  # creation -> binding, as the watch sees it
    sched: dict[str, list[float]] = {"vm": [], "plain": []}  # kube-scheduler's own figure
    attempts: dict[str, float] = {"vm": 0.0, "plain": 0.0}
    try:
        for i in range(n):
            name = f"bind-{i}"
            before, before_attempts = metrics.histogram(SLI), metrics.histogram(ATTEMPTS)
            vm = sb.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "failovervms",
                                                           halt_vm(name, namespace, image, POOL))
            uid = vm["metadata"]["uid"]
            created, bound, vm_pod = _binding(
                tl, lambda o, u=uid: _labels(o).get(labels.VM_UID_LABEL) == u
                and _labels(o).get(labels.ROLE_LABEL) == labels.ROLE_RUNNING, f"the VM pod of {name}")
            seen["vm"].append(bound - created)
            took = metrics.one_more(before, f"the VM pod of {name}")
            if took is not None:
                sched["vm"].append(took)
            attempts["vm"] += _attempts(metrics, before_attempts)
            wait(lambda n_=name: _phase(sb, namespace, n_) == "Running", 120, f"{name} Running", 0.1)

            plain = plain_pod(vm_pod, f"plain-{i}")
            before, before_attempts = metrics.histogram(SLI), metrics.histogram(ATTEMPTS)
            # Not deserialized: the watch's thread is not kept waiting for this one.
            sb.core.create_namespaced_pod(namespace, plain)
            created, bound, _ = _binding(tl, lambda o, p=plain["metadata"]["name"]: _labels(o).get(PLAIN_LABEL) == p,
                                         f"plain pod {plain['metadata']['name']}")
            seen["plain"].append(bound - created)
            took = metrics.one_more(before, f"plain pod {plain['metadata']['name']}")
            if took is not None:
                sched["plain"].append(took)
            attempts["plain"] += _attempts(metrics, before_attempts)
            sb.core.delete_namespaced_pod(plain["metadata"]["name"], namespace, grace_period_seconds=0)

            sb.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "failovervms", name)
            wait(lambda n_=name: _vm_gone(sb, namespace, n_), 60, f"{name} deleted", 0.1)
    finally:
        tl.stop()
    out: dict[str, Any] = {"benchmark": "scheduler_binding", "n": n, "machine": machine()}
    for kind in ("vm", "plain"):
        out[f"{kind}_pod_scheduler_s"] = summary(sched[kind])
        out[f"{kind}_pod_watch_s"] = summary(seen[kind])
        out[f"{kind}_pod_attempts"] = attempts[kind]
    for fig in ("scheduler", "watch"):
        v, p = out[f"vm_pod_{fig}_s"], out[f"plain_pod_{fig}_s"]
        out[f"ratio_{fig}_p50"] = v["p50"] / p["p50"] if p["p50"] else float("nan")
    return out


def _report(res: dict[str, Any]) -> None:
    print(f"kube-scheduler: pod -> bound, {res['n']} VM pods and {res['n']} plain pods with the same requests "
          f"(sandbox, {res['machine']['cpu']})")
    print(f"{'':44}{'VM pod p50/p95 (ms)':>22}{'plain pod p50/p95 (ms)':>25}{'ratio p50':>11}")
    for fig, what in (("scheduler", "kube-scheduler's own (queued -> bound)"), ("watch", "creation -> bound (watch)")):
        v, p = res[f"vm_pod_{fig}_s"], res[f"plain_pod_{fig}_s"]
        print(f"{what:44}{v['p50'] * 1000:>12.1f} /{v['p95'] * 1000:>7.1f}"
              f"{p['p50'] * 1000:>15.1f} /{p['p95'] * 1000:>7.1f}{res[f'ratio_{fig}_p50']:>11.2f}")
    print(f"scheduling attempts: {res['vm_pod_attempts']:.0f} for the VM pods, {res['plain_pod_attempts']:.0f} for "
          "the plain pods")


def main() -> None:
    bench_main(__doc__, run, ("-n",), 20, _report)


if __name__ == "__main__":
    main()
