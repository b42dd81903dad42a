"""Benchmark: N FailoverVMs placed on M agent-less nodes, next to kube-scheduler binding N plain pods.

Needs a sandbox with virtual nodes (`failovervm sandbox up --virtual-nodes M --vfs-per-node K`:
Nodes kept Ready by the heartbeat, their VFs published as an agent publishes them, no libvirtd, no
agent; VMs placed there never start). Uses a VFPool that selects only those nodes. One run:

  raw floor: `clients` threads create N plain pods with the requests a VM pod has (CPU, memory and
             one vf.failovervm.io/<pool>, built by failovervm.vmpod like the controller's), and the
             time until kube-scheduler has bound all of them (a watch stamps each binding); then they
             are deleted;
  operator:  `clients` threads create N FailoverVMs through the admission webhook (create
             throughput), and the time until every one is placed (status.nodeName and status.vf,
             stamped by a watch), from the first create and from the last one;
  requests:  the apiserver's own `apiserver_request_total` (its /metrics, scraped before the first
             create and once all are placed), per VM by verb and resource; time-based traffic that
             does not depend on N (leases, node heartbeats, the heartbeat's and agents' polling) is
             shown apart; those refused with 409 Conflict; and the watch events the apiserver sent
             to all its watchers meanwhile (apiserver_watch_events_total and _sizes), per VM by
             resource;
  memory:    the RSS of the active controller (the replica that used the most CPU meanwhile; the
             standby apart), the agents and the heartbeat once all are placed, and the active
             controller's CPU time per VM, and how much of it Python's garbage collector took
             (failovervm_python_gc_seconds_total), in how many collections of each generation and
             how long the longest held the event loop (failovervm_python_gc_pause_seconds);
  CPU:       the CPU time of every sandbox process (etcd, kube-apiserver, kube-scheduler, the
             controller replicas, ...) and of the benchmark's own clients, per VM and per plain pod,
             over each phase (first create to all placed / bound): where the cores went;
  --py-spy:  each controller replica's Python stacks while it holds the GIL over the VM phase
             (py-spy, collapsed; compare two sizes with benchmarks.profile_compare);
  --pprof:   kube-apiserver's Go CPU profile over each phase (10 s windows) and its live heap at
             the end of it (the sandbox up with --profiling; benchmarks.profile_compare too).
Then the VMs are deleted (the benchmark removes the agent finalizer, as the missing agents would:
no domain ever existed, also from a VM placed while it was being deleted) and the namespace with them.

  .venv/bin/python -m benchmarks.scale --state-dir /var/lib/failovervm-sandbox -n 1000
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import profile_compare
from benchmarks.common import SandboxHandle, bench_main, ensure_namespace, machine, wait
from failovervm import API_GROUP, API_VERSION, kubeclient, labels, vmpod

POOL = "bench-scale-pool"
PLAIN_LABEL = "bench.failovervm.io/scale-plain"
CLIENTS = 8
# Traffic that comes with time, not with VMs: (verb, resource) pairs of leases, the heartbeat's
# node status and pod sweeps, and the agents' / the virtual nodes' inventory rounds.
TIME_BASED = {("PUT", "leases"), ("PATCH", "leases"), ("GET", "leases"), ("PATCH", "nodes/status"),
              ("LIST", "pods@cluster"), ("LIST", "nodes@cluster"), ("GET", "nodes"), ("LIST", "vfpools@cluster"),
              ("GET", "vfinventories"), ("WATCH", "leases"),
              # Kopf's peering keep-alive of the two controller replicas (every few seconds each).
              ("GET", "clusterkopfpeerings"), ("PATCH", "clusterkopfpeerings")}


def _client(sb: SandboxHandle) -> kubeclient.ApiClient:
    return kubeclient.ApiClient(kubeclient.Configuration.from_kubeconfig(sb.kubeconfig))


def _apiserver_get(sb: SandboxHandle, path: str, timeout: float = 30) -> bytes:
    """GET `path` from the apiserver (HTTPS, the sandbox CA, the admin client certificate)."""
    pki = sb.state_dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    url = f"https://127.0.0.1:{sb.data['apiserver']['port']}{path}"
    with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
        return bytes(resp.read())


def metrics_text(sb: SandboxHandle) -> str:
    """The apiserver's /metrics."""
    return _apiserver_get(sb, "/metrics").decode()


def series(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """The labelled samples `name{labels} value` of a /metrics text: (labels, value) each."""
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        yield dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))), float(m.group(2))


def sum_count(text: str, metric: str, **match: str) -> tuple[float, float]:
    """(sum, count) of a histogram in a /metrics text, over the series whose labels include `match`."""
    sum_, count = (sum((v for lbl, v in series(text, f"{metric}_{part}") if _matches(lbl, match)), 0.0)
                   for part in ("sum", "count"))
    return sum_, count


def _matches(labels: dict[str, str], match: dict[str, str]) -> bool:
    return all(labels.get(k) == want for k, want in match.items())


def bucket_deltas(before: str, after: str, metric: str, **match: str) -> dict[float, float]:
    """A histogram's observations between two scrapes at or under each of its bucket bounds (inf:
    all of them), over the series whose labels include `match`; the bounds are those of `after`."""
    def buckets(text: str) -> dict[float, float]:
        out: dict[float, float] = {}
        for lbl, v in series(text, f"{metric}_bucket"):
            if "le" in lbl and _matches(lbl, match):
                le = float(lbl["le"])  # "+Inf" too
                out[le] = out.get(le, 0.0) + v
        return out
    b0 = buckets(before)
    return {le: c - b0.get(le, 0.0) for le, c in buckets(after).items()}


def watch_events(before: str, after: str) -> dict[str, dict[str, float]]:
    """The events the apiserver sent to all its watchers between two scrapes, by resource (a write
    seen by three watchers counts three): their number and bytes (apiserver_watch_events_total,
    apiserver_watch_events_sizes)."""
    def by_resource(text: str, name: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for lbl, v in series(text, name):
            out[lbl.get("resource") or lbl.get("kind") or "?"] += v
        return out
    out: dict[str, dict[str, float]] = {}
    for key, name in (("events", "apiserver_watch_events_total"), ("bytes", "apiserver_watch_events_sizes_sum")):
        for res, grown in (by_resource(after, name) - by_resource(before, name)).items():
            out.setdefault(res, {"events": 0.0, "bytes": 0.0})[key] = grown
    return out


def mean_ms(before: str, after: str, metric: str, **match: str) -> float | None:
    """The mean of a histogram's observations between two scrapes, in ms (None: none observed)."""
    (s0, c0), (s1, c1) = sum_count(before, metric, **match), sum_count(after, metric, **match)
    return (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else None


def share_over(before: str, after: str, metric: str, seconds: float, **match: str) -> float | None:
    """The share of a histogram's observations between two scrapes that took longer than
    `seconds` (one of its bucket bounds), over the series whose labels include `match` (None: none
    observed, or no such bucket)."""
    grew = bucket_deltas(before, after, metric, **match)
    total = grew.get(float("inf"), 0.0)
    return 1.0 - grew[seconds] / total if seconds in grew and total > 0 else None


def scrape(sb: SandboxHandle, text: str | None = None, code: str | None = None) -> Counter[tuple[str, str]]:
    """apiserver_request_total from the apiserver's /metrics, summed over codes (only `code`, e.g.
    "409", when given) and components: (verb, resource[/subresource][@cluster for cluster-wide LISTs
    and WATCHes]) -> count."""
    if text is None:
        text = metrics_text(sb)
    out: Counter[tuple[str, str]] = Counter()
    for lbl, value in series(text, "apiserver_request_total"):
        if code is not None and lbl.get("code") != code:
            continue
        resource = lbl.get("resource", "")
        if lbl.get("subresource"):
            resource += "/" + lbl["subresource"]
        if lbl.get("verb") in ("LIST", "WATCH") and lbl.get("scope") == "cluster":
            resource += "@cluster"
        out[(lbl.get("verb", ""), resource)] += int(value)
    return out


def per_vm(counts: Counter[tuple[str, str]], n: int) -> dict[str, float]:
    """Request counts by (verb, resource) as "verb resource" -> per VM, the most first."""
    return {f"{v} {r}": c / n for (v, r), c in counts.most_common()}


def rss_mib(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _processes(state_dir: Path) -> dict[str, int]:
    """The sandbox's processes by name (sandbox.json): control plane, controller replicas, heartbeat,
    agents."""
    d = json.loads((state_dir / "sandbox.json").read_text())
    return {k: int(v["pid"]) for k, v in d.items() if isinstance(v, dict) and v.get("pid")}


class CpuMeter:
    """CPU seconds each sandbox process (and this benchmark's own client threads) used between
    start() and stop(): where the 2 cores went, per phase. `details` then holds, per process, its
    user and system seconds and its threads' voluntary and involuntary context switches meanwhile
    (what a process spends in the kernel and on switching threads, e.g. for the GIL)."""

    def __init__(self, state_dir: Path) -> None:
        self.pids = _processes(state_dir)
        self.before: dict[str, dict[str, float] | None] = {}
        self.details: dict[str, dict[str, float]] = {}

    def _read(self) -> dict[str, dict[str, float] | None]:
        """Every process's details now (None: unreadable), this benchmark's own among them."""
        t = os.times()
        return {**{k: process_details(pid) for k, pid in self.pids.items()},
                "benchmark clients": {"user_s": t.user, "system_s": t.system, **context_switches(os.getpid())}}

    def start(self) -> CpuMeter:
        self.before = self._read()
        return self

    def stop(self) -> dict[str, float]:
        after = self._read()
        self.details = {k: {f: round(v - (self.before.get(k) or {}).get(f, 0.0), 2) for f, v in d.items()}
                        for k, d in after.items() if d is not None and self.before.get(k) is not None}
        return {k: round(_cpu(d) - _cpu(self.before[k]), 2) for k, d in after.items()
                if d is not None and k in self.before}


def _cpu(details: Mapping[str, float] | None) -> float:
    """User + system CPU seconds of process_details (0 when it could not be read)."""
    return details["user_s"] + details["system_s"] if details else 0.0


PROBE_PERIOD = 0.5  # seconds between two rounds of the speed probe


def probe_work() -> int:
    """One round of the speed probe: the same interpreter work every time (building, encoding and
    hashing a few thousand small dicts, what the controller and the clients mostly do)."""
    d = {f"k{i}": {"n": i, "s": str(i), "l": [i, i + 1]} for i in range(1500)}
    return len(hashlib.sha256(json.dumps(d).encode()).digest())


class SpeedProbe:
    """The machine's speed during a phase: a thread of its own runs probe_work every PROBE_PERIOD s
    and keeps the CPU time of each round (time.thread_time: its own thread's CPU, not its waits for
    the cores or the GIL). The work is the same at any N, so the median round says how fast the
    machine ran the phase (frequency, the host's other tenants): this machine's speed changes between
    runs by up to 30-40 % (benchmarks/README.md, tenth round). Its own CPU time is taken out of the
    benchmark clients' figure."""

    def __init__(self) -> None:
        self.rounds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speed-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(PROBE_PERIOD):
            t0 = time.thread_time()
            probe_work()
            self.rounds.append(time.thread_time() - t0)

    def start(self) -> SpeedProbe:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """The rounds, their median CPU time (ms) and the probe's whole CPU time (s)."""
        self._stop.set()
        self._thread.join()
        return {"rounds": len(self.rounds), "median_ms": statistics.median(self.rounds) * 1000 if self.rounds else 0.0,
                "cpu_s": sum(self.rounds)}


def without_probe(cpu_s: dict[str, float], details: dict[str, dict[str, float]], probe: Mapping[str, float]) -> None:
    """Take the speed probe's CPU time out of the benchmark clients' (it runs in their process; all of
    it counted as user time)."""
    key = "benchmark clients"
    if key in cpu_s:
        cpu_s[key] = round(max(cpu_s[key] - probe["cpu_s"], 0.0), 2)
    if key in details:
        details[key]["user_s"] = round(max(details[key].get("user_s", 0.0) - probe["cpu_s"], 0.0), 2)


def controller_metrics(port: int | None) -> str:
    """A controller replica's /metrics text; empty when it cannot be read."""
    if not port:
        return ""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:
        return ""


def gc_seconds(text: str) -> dict[str, float]:
    """A controller's time in Python's garbage collector so far, by generation (its
    failovervm_python_gc_seconds_total)."""
    return {lbl["generation"]: v for lbl, v in series(text, "failovervm_python_gc_seconds_total")
            if "generation" in lbl}


def gc_pauses(before: str, after: str) -> dict[str, dict[str, float | None]]:
    """The collections between two scrapes of a controller, by generation: how many, their mean
    length and the upper bound of the longest (the smallest bucket of
    failovervm_python_gc_pause_seconds holding all of them), in ms."""
    metric = "failovervm_python_gc_pause_seconds"
    res: dict[str, dict[str, float | None]] = {}
    for gen in sorted({lbl["generation"] for lbl, _ in series(after, f"{metric}_bucket") if "generation" in lbl}):
        grew = bucket_deltas(before, after, metric, generation=gen)
        count = grew.get(float("inf"), 0.0)
        if not count:
            continue
        longest = min((le for le, c in grew.items() if c >= count), default=float("inf"))
        res[gen] = {"collections": count, "mean_ms": mean_ms(before, after, metric, generation=gen),
                    "longest_at_most_ms": None if longest == float("inf") else longest * 1000}
    return res


class PySpy:
    """`py-spy record` attached to each controller replica over one phase (--py-spy): its collapsed
    stacks while it holds the GIL (its Python work, not its waits), to compare where a replica's
    time goes at two sizes. SIGINT makes py-spy write them."""

    def __init__(self, state_dir: Path, replicas: dict[str, Any], n: int, rate: int = profile_compare.RATE) -> None:
        self.cmds = {k: ["py-spy", "record", "--nonblocking", "--gil", "--rate", str(rate), "--format", "raw",
                         "--output", str(state_dir / f"py-spy-{k}-{n}.txt"), "--pid", str(pid)]
                     for k, pid in replicas.items() if pid}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> PySpy:
        if shutil.which("py-spy") is None:
            raise SystemExit("--py-spy: py-spy is not on PATH (pip install py-spy)")
        self.procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for cmd in self.cmds.values()]
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


class Pprof:
    """kube-apiserver's Go CPU profile over one phase (--pprof; the sandbox up with --profiling):
    consecutive /debug/pprof/profile windows of CHUNK_S seconds, each a file
    STATE_DIR/pprof-apiserver-<phase>-<N>-<i>.pb.gz (benchmarks.profile_compare and `go tool pprof`
    take them all at once), and its live heap at the end."""

    CHUNK_S = 10

    def __init__(self, sb: SandboxHandle, phase: str, n: int) -> None:
        self.sb, self.prefix, self.heap = sb, f"pprof-apiserver-{phase}-{n}", f"pprof-apiserver-heap-{phase}-{n}.pb.gz"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.files: list[Path] = []
        self.error: Exception | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = _apiserver_get(self.sb, f"/debug/pprof/profile?seconds={self.CHUNK_S}", self.CHUNK_S + 30)
                path = self.sb.state_dir / f"{self.prefix}-{len(self.files)}.pb.gz"
                path.write_bytes(data)
                self.files.append(path)
        except (OSError, urllib.error.URLError) as e:  # reported by stop(): the profile has a gap
            self.error = e

    def start(self) -> Pprof:
        try:
            _apiserver_get(self.sb, "/debug/pprof/")
        except urllib.error.HTTPError as e:
            raise SystemExit(f"--pprof: kube-apiserver serves no profiles ({e}): "
                             "`failovervm sandbox up --profiling`") from None
        self._thread.start()
        return self

    def stop(self) -> None:
        """After the window running now (the phase's last seconds are in it); then the live heap
        (STATE_DIR/pprof-apiserver-heap-<phase>-<N>.pb.gz: what the watch caches hold at N)."""
        self._stop.set()
        self._thread.join(self.CHUNK_S + 40)
        if self.error is not None:
            print(f"--pprof: {self.prefix} stopped after {len(self.files)} windows: {self.error}",
                  file=sys.stderr, flush=True)
        try:  # in the phase's `finally`: a failed fetch must not hide the phase's own error
            (self.sb.state_dir / self.heap).write_bytes(_apiserver_get(self.sb, "/debug/pprof/heap?gc=1"))
        except (OSError, urllib.error.URLError) as e:
            print(f"--pprof: no heap profile {self.heap}: {e}", file=sys.stderr, flush=True)


def _metrics_ports(state_dir: Path) -> dict[str, int]:
    op = json.loads((state_dir / "sandbox.json").read_text()).get("operator") or {}
    return {k.removesuffix("_metrics_port"): int(v) for k, v in op.items()
            if k.endswith("_metrics_port") and k.startswith("controller")}


def context_switches(pid: int) -> dict[str, float]:
    """The voluntary and involuntary context switches of all of a process's live threads so far
    (/proc/<pid>/task/*/status; a thread that ended takes its own with it)."""
    res = {"voluntary_switches": 0.0, "involuntary_switches": 0.0}
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # the thread ended meanwhile
        res = parse_switches(text, res)
    return res


def parse_switches(status: str, total: Mapping[str, float] | None = None) -> dict[str, float]:
    """A thread's context switches from its /proc status text, added to `total`."""
    res = dict(total or {"voluntary_switches": 0.0, "involuntary_switches": 0.0})
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            name = "voluntary_switches" if key.startswith("voluntary") else "involuntary_switches"
            res[name] += float(value.split()[0])
    return res


def details_per(details: Mapping[str, Mapping[str, float]], n: int) -> dict[str, dict[str, float]]:
    """CpuMeter.details per VM (or pod): user and system CPU in ms, context switches as counts."""
    return {k: {(f.removesuffix("_s") + "_ms" if f.endswith("_s") else f): (v * 1000 if f.endswith("_s") else v) / n
                for f, v in d.items()} for k, d in details.items()}


def process_details(pid: int | None) -> dict[str, float] | None:
    """A process's user and system CPU seconds (/proc/<pid>/stat) and its threads' context switches
    so far; None when it cannot be read."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    return {"user_s": int(fields[11]) / tck, "system_s": int(fields[12]) / tck, **context_switches(pid)}


class Stamps:
    """A watch of one namespace's objects of a kind, stamping (time.perf_counter) the first event in
    which `done(obj)` holds, per object name."""

    def __init__(self, sb: SandboxHandle, path: str, done: Callable[[dict[str, Any]], bool],
                 label_selector: str | None = None) -> None:
        self.api, self.path, self.done, self.selector = _client(sb), path, done, label_selector
        self.at: dict[str, float] = {}
        self._stop = threading.Event()
        self._w: kubeclient.Watch | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rv: str | None = None
        kw = {"label_selector": self.selector} if self.selector else {}
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = self.api.request("GET", self.path, query=kw)
                    rv = listed["metadata"]["resourceVersion"]
                    for obj in listed.get("items") or []:
                        self._see(obj)
                self._w = kubeclient.Watch(self.api)
                for ev in self._w.stream(self.path, resource_version=rv, timeout_seconds=300,
                                         allow_watch_bookmarks=True, **kw):
                    obj = ev["object"]
                    if ev["type"] == "ERROR":  # 410 Gone: list again
                        rv = None
                        break
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._see(obj)
                    if self._stop.is_set():
                        break
            except Exception:
                rv = None
                time.sleep(0.2)

    def _see(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if name not in self.at and self.done(obj):
            self.at[name] = time.perf_counter()

    def start(self) -> Stamps:
        self._thread.start()
        time.sleep(1.0)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._w is not None:
            self._w.stop()


def _create_all(sb: SandboxHandle, bodies: list[dict[str, Any]], create: Callable[[Any, dict[str, Any]], Any],
                clients: int) -> tuple[float, float]:
    """Create `bodies` from `clients` threads (each its own connection); (first start, last end)."""
    apis = [_client(sb) for _ in range(clients)]
    chunks = [bodies[i::clients] for i in range(clients)]
    ends: list[float] = []

    def worker(i: int) -> None:
        for body in chunks[i]:
            for attempt in range(20):
                try:
                    create(apis[i], body)
                    break
                except kubeclient.ApiException as exc:
                    if exc.status == 409:
                        break
                    if exc.status not in (429, 500, 503, 504) or attempt == 19:
                        raise
                    time.sleep(0.1 * (attempt + 1))
        ends.append(time.perf_counter())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return t0, max(ends)


def vm_body(name: str, ns: str) -> dict[str, Any]:
    """One small VM (nothing ever boots it: its node has no agent)."""
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "FailoverVM",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"running": True, "cpu": 1, "memory": "32Mi", "terminationGracePeriodSeconds": 0,
                     "network": {"pool": POOL}}}


def plain_pod(name: str, ns: str, pool: dict[str, Any]) -> dict[str, Any]:
    """A pod with the spec a VM pod of vm_body() has (failovervm.vmpod.build), without its owner and
    labels: only kube-scheduler acts on it."""
    vm = {**vm_body(name, ns), "metadata": {"name": name, "namespace": ns, "uid": f"plain-{name}"}}
    pod = vmpod.build(vm, pool, vmpod.PodSettings())
    spec = dict(pod["spec"])
    for key in ("nodeName", "priority", "preemptionPolicy"):
        spec.pop(key, None)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {PLAIN_LABEL: "yes"}}, "spec": spec}


def ensure_virtual_pool(sb: SandboxHandle, capacity: int) -> dict[str, Any]:
    """The pool on the virtual nodes only; waits until the controller counts all their VFs free."""
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "VFPool", "metadata": {"name": POOL},
            "spec": {"nodeSelector": {labels.SANDBOX_VIRTUAL_NODE: "true"}, "pfNames": ["sbxpf0"],
                     "standby": {"type": "bridge", "source": sb.data["bridge"]}}}
    try:
        sb.custom.create_cluster_custom_object(API_GROUP, API_VERSION, "vfpools", body)
    except kubeclient.ApiException as exc:
        if exc.status != 409:
            raise

    def ready() -> bool:
        pool = sb.custom.get_cluster_custom_object(API_GROUP, API_VERSION, "vfpools", POOL)
        return int(((pool.get("status") or {}).get("totals") or {}).get("free", 0)) >= capacity

    wait(ready, 120, f"{capacity} free VFs in pool {POOL}", 0.5)
    return dict(sb.custom.get_cluster_custom_object(API_GROUP, API_VERSION, "vfpools", POOL))


def fresh_namespace(sb: SandboxHandle, name: str) -> None:
    """The namespace, once an earlier run's deletion of it has finished."""
    def usable() -> bool:
        try:
            return bool(sb.core.read_namespace(name).get("status", {}).get("phase") != "Terminating")
        except kubeclient.ApiException as exc:
            return exc.status == 404

    wait(usable, 900, f"namespace {name} of an earlier run deleted", 1.0)
    ensure_namespace(sb, name)


def _placed(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    return bool(st.get("nodeName") and (st.get("vf") or {}).get("pciAddress"))


def _cleanup(sb: SandboxHandle, ns: str, names: list[str], clients: int) -> None:
    """Delete the VMs, removing the agent finalizer as the missing agents would (no domain ever existed)."""
    apis = [_client(sb) for _ in range(clients)]

    def one(i: int) -> None:
        custom = kubeclient.CustomObjectsApi(apis[i])
        for name in names[i::clients]:
            try:
                vm = custom.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms", name)
                fins = [f for f in vm["metadata"].get("finalizers") or [] if f != labels.AGENT_FINALIZER]
                custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms", name, {
                    "metadata": {"finalizers": fins, "resourceVersion": vm["metadata"]["resourceVersion"]}})
                custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms", name)
            except kubeclient.ApiException:
                pass  # gone, or changed meanwhile: the sweep below finds it

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))
    # A VM placed while it was being deleted (the controller's placement raced the first pass) or
    # whose finalizer patch met a conflict still holds the agent finalizer: strip it until none is left.
    custom = kubeclient.CustomObjectsApi(apis[0])

    def stuck() -> list[dict[str, Any]]:
        vms = custom.list_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms")["items"]
        return [v for v in vms if v["metadata"].get("deletionTimestamp")
                and labels.AGENT_FINALIZER in (v["metadata"].get("finalizers") or [])]

    deadline = time.monotonic() + 300
    while (left := stuck()) and time.monotonic() < deadline:
        for vm in left:
            fins = [f for f in vm["metadata"].get("finalizers") or [] if f != labels.AGENT_FINALIZER]
            try:
                custom.patch_namespaced_custom_object(
                    API_GROUP, API_VERSION, ns, "failovervms", vm["metadata"]["name"],
                    {"metadata": {"finalizers": fins, "resourceVersion": vm["metadata"]["resourceVersion"]}})
            except kubeclient.ApiException:
                pass  # changed meanwhile: the next round reads it again
        time.sleep(2)


def run(state_dir: Path, n: int = 1000, namespace: str = "bench-scale", clients: int = CLIENTS,
        keep: bool = False, py_spy: bool = False, pprof: bool = False) -> dict[str, Any]:
    sb = SandboxHandle(state_dir)
    m = int(sb.data.get("virtual_nodes") or 0)
    if not m:
        raise SystemExit("the sandbox has no virtual nodes: `failovervm sandbox up --virtual-nodes M`")
    capacity = m * int(sb.data["vfs_per_node"])
    if n > capacity:
        raise SystemExit(f"{n} VMs need {n} VFs; the {m} virtual nodes have {capacity}")
    raw_ns = f"{namespace}-raw"
    fresh_namespace(sb, namespace)
    fresh_namespace(sb, raw_ns)
    pool = ensure_virtual_pool(sb, capacity)
    wait(lambda: bool(sb.core.list_namespaced_service_account(raw_ns)["items"]), 30, "the default ServiceAccount")
    wait(lambda: bool(sb.core.list_namespaced_service_account(namespace)["items"]), 30, "the default ServiceAccount")
    core = kubeclient.CoreV1Api(_client(sb))
    out: dict[str, Any] = {"benchmark": "scale", "n": n, "virtual_nodes": m, "vfs_per_node": sb.data["vfs_per_node"],
                           "clients": clients, "machine": machine()}

    # The raw floor: kube-scheduler binding N plain pods of the same requests.
    bound = Stamps(sb, kubeclient.core_path("pods", namespace=raw_ns),
                   lambda o: bool((o.get("spec") or {}).get("nodeName")), f"{PLAIN_LABEL}=yes").start()
    pods = [plain_pod(f"plain-{i}", raw_ns, pool) for i in range(n)]
    raw_text = metrics_text(sb)
    raw_cpu = CpuMeter(state_dir).start()
    raw_probe = SpeedProbe().start()
    raw_prof = Pprof(sb, "raw", n).start() if pprof else None
    p0, p_last = _create_all(sb, pods, lambda api, b: kubeclient.CoreV1Api(api).create_namespaced_pod(
        raw_ns, b), clients)
    wait(lambda: len(bound.at) >= n, 60 + n * 0.2, f"{n} plain pods bound", 0.1)
    bound.stop()
    raw_speed = raw_probe.stop()
    raw_cpu_s = raw_cpu.stop()
    without_probe(raw_cpu_s, raw_cpu.details, raw_speed)
    if raw_prof is not None:
        raw_prof.stop()
    raw_text_after = metrics_text(sb)
    out["raw"] = {"create_s": p_last - p0, "creates_per_s": n / (p_last - p0),
                  "all_bound_s": max(bound.at.values()) - p0, "after_last_create_s": max(bound.at.values()) - p_last,
                  "cpu_ms_per_pod": {k: v / n * 1000 for k, v in raw_cpu_s.items() if v > 0},
                  "cpu_details_per_pod": details_per(raw_cpu.details, n),
                  # The machine's speed meanwhile: the median CPU time of the probe's fixed round.
                  "speed_probe_ms": raw_speed["median_ms"],
                  "create_ms": mean_ms(raw_text, raw_text_after, "apiserver_request_duration_seconds",
                                       verb="POST", resource="pods", subresource="")}
    core.delete_collection_namespaced_pod(raw_ns, label_selector=f"{PLAIN_LABEL}=yes", grace_period_seconds=0)
    wait(lambda: not core.list_namespaced_pod(raw_ns, label_selector=f"{PLAIN_LABEL}=yes")["items"], 120,
         "plain pods deleted", 0.5)

    # The operator.
    placed = Stamps(sb, kubeclient.custom_path(API_GROUP, API_VERSION, "failovervms", namespace=namespace),
                    _placed).start()
    before_text = metrics_text(sb)
    before, conflicts_before = scrape(sb, before_text), scrape(sb, before_text, code="409")
    # Every controller replica: the active one is the one that worked (the most CPU time meanwhile).
    replicas = {k: v.get("pid") for k, v in json.loads((state_dir / "sandbox.json").read_text()).items()
                if (k == "controller" or k.startswith("controller-")) and isinstance(v, dict)}
    ports = _metrics_ports(state_dir)
    metrics_before = {k: controller_metrics(ports.get(k)) for k in replicas}
    op_cpu = CpuMeter(state_dir).start()
    op_probe = SpeedProbe().start()
    spies = PySpy(state_dir, replicas, n).start() if py_spy else None
    op_prof = Pprof(sb, "operator", n).start() if pprof else None
    names = [f"scale-{i}" for i in range(n)]
    try:
        t0, t_last = _create_all(
            sb, [vm_body(nm, namespace) for nm in names], lambda api, b: kubeclient.CustomObjectsApi(
                api).create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "failovervms", b), clients)
        wait(lambda: len(placed.at) >= n, 120 + n * 0.5, f"{n} VMs placed", 0.1)
    finally:
        after_text = metrics_text(sb)
        after, conflicts_after = scrape(sb, after_text), scrape(sb, after_text, code="409")
        op_speed = op_probe.stop()
        op_cpu_s = op_cpu.stop()
        without_probe(op_cpu_s, op_cpu.details, op_speed)
        if spies is not None:
            spies.stop()
        if op_prof is not None:
            op_prof.stop()
        placed.stop()
    t_placed = max(placed.at.values()) if placed.at else float("nan")
    out["operator"] = {"create_s": t_last - t0, "creates_per_s": n / (t_last - t0), "placed": len(placed.at),
                       "all_placed_s": t_placed - t0, "after_last_create_s": t_placed - t_last,
                       "per_vm_ms": (t_placed - t0) / n * 1000,
                       # The (active) controller's CPU time from the first create to all placed.
                       "controller_cpu_ms_per_vm": None,
                       "cpu_ms_per_vm": {k: v / n * 1000 for k, v in op_cpu_s.items() if v > 0},
                       # Of it, user and system CPU, and the threads' context switches, per VM.
                       "cpu_details_per_vm": details_per(op_cpu.details, n),
                       "speed_probe_ms": op_speed["median_ms"],
                       # The mean time of a create in the API server, and of its admission webhook call.
                       "create_ms": mean_ms(before_text, after_text, "apiserver_request_duration_seconds",
                                            verb="POST", resource="failovervms", subresource=""),
                       # What every watcher received meanwhile, per VM: events and bytes by resource.
                       "watch_per_vm": {r: {k: v / n for k, v in e.items()}
                                        for r, e in sorted(watch_events(before_text, after_text).items(),
                                                           key=lambda kv: -kv[1]["bytes"])},
                       "webhook_ms": mean_ms(before_text, after_text,
                                             "apiserver_admission_webhook_admission_duration_seconds",
                                             operation="CREATE"),
                       # Its tail: the share of those calls longer than 0.1 s and 0.5 s (the
                       # apiserver's buckets), where the controller's pauses would show.
                       "webhook_over": {f"{s:g}s": share_over(before_text, after_text,
                                                              "apiserver_admission_webhook_admission_duration_seconds",
                                                              s, operation="CREATE") for s in (0.1, 0.5)}}
    worked = {k: op_cpu_s[k] for k in replicas if k in op_cpu_s}  # CPU seconds of each replica meanwhile
    active = max(worked, key=lambda k: worked[k]) if worked else "controller"
    if worked:
        out["operator"]["controller_cpu_ms_per_vm"] = worked[active] / n * 1000
    metrics_after = controller_metrics(ports.get(active))
    gc_before, gc_after = gc_seconds(metrics_before.get(active, "")), gc_seconds(metrics_after)
    if gc_after:
        out["operator"]["controller_gc_ms_per_vm"] = {
            g: (v - gc_before.get(g, 0.0)) / n * 1000 for g, v in sorted(gc_after.items())}
        # Each collection holds the event loop (webhooks included): how long they were.
        out["operator"]["controller_gc_pauses"] = gc_pauses(metrics_before.get(active, ""), metrics_after)
    out["ratio_all_placed"] = out["operator"]["all_placed_s"] / out["raw"]["all_bound_s"]
    delta = after - before  # the counts that grew
    time_based = sum(c for (v, r), c in delta.items() if (v, r) in TIME_BASED)
    out["requests"] = {"total": sum(delta.values()), "per_vm": sum(delta.values()) / n,
                       "time_based": time_based, "per_vm_without_time_based": (sum(delta.values()) - time_based) / n,
                       "by_verb_resource_per_vm": per_vm(delta, n),
                       # Writes refused for a stale resourceVersion (409 Conflict), each retried.
                       "conflicts_per_vm": per_vm(conflicts_after - conflicts_before, n)}
    d = json.loads((state_dir / "sandbox.json").read_text())
    out["rss_mib"] = {"controller": rss_mib(replicas.get(active)),
                      **{f"{k} (standby)": rss_mib(pid) for k, pid in replicas.items() if k != active},
                      "heartbeat": rss_mib(d.get("heartbeat", {}).get("pid")),
                      **{k: rss_mib(v.get("pid")) for k, v in d.items()
                         if k.startswith("agent-") and isinstance(v, dict)}}
    # The figures before the cleanup (which takes minutes at thousands of VMs and may be cut short).
    print(json.dumps(out), file=sys.stderr, flush=True)
    if not keep:
        _cleanup(sb, namespace, names, clients)
        for ns in (namespace, raw_ns):
            core.delete_namespace(ns, propagation_policy="Background")
    return out


def _report(res: dict[str, Any]) -> None:
    op, raw, rq = res["operator"], res["raw"], res["requests"]
    print(f"{res['n']} FailoverVMs on {res['virtual_nodes']} agent-less nodes x {res['vfs_per_node']} VFs, "
          f"{res['clients']} clients (sandbox, {res['machine']['cpu']}, {res['machine']['cores']} cores)")
    print(f"{'':46}{'operator':>12}{'raw floor':>12}{'ratio':>8}")
    print(f"{'all placed / bound, from the first create':46}{op['all_placed_s']:>11.1f}s{raw['all_bound_s']:>11.1f}s"
          f"{res['ratio_all_placed']:>8.2f}")
    print(f"{'  of which after the last create':46}{op['after_last_create_s']:>11.1f}s"
          f"{raw['after_last_create_s']:>11.1f}s")
    print(f"{'creates/s (VMs through the webhook; pods)':46}{op['creates_per_s']:>12.0f}{raw['creates_per_s']:>12.0f}")
    if op.get("create_ms") is not None and raw.get("create_ms") is not None:
        print(f"{'mean create in the apiserver':46}{op['create_ms']:>10.1f}ms{raw['create_ms']:>10.1f}ms")
    if op.get("webhook_ms") is not None:
        print(f"{'  of which the admission webhook':46}{op['webhook_ms']:>10.1f}ms")
    over = {k: v for k, v in (op.get("webhook_over") or {}).items() if v is not None}
    if over:
        print(f"{'  webhook calls longer than':46}" + ", ".join(f"{k}: {v:.1%}" for k, v in over.items()))
    print(f"{'time per VM (all placed / N)':46}{op['per_vm_ms']:>10.1f}ms")
    if op.get("speed_probe_ms") is not None:
        print(f"{'speed probe (median CPU of its fixed round)':46}{op['speed_probe_ms']:>10.2f}ms"
              f"{raw.get('speed_probe_ms') or 0.0:>10.2f}ms")
    if op.get("controller_cpu_ms_per_vm") is not None:
        print(f"{'controller CPU per VM':46}{op['controller_cpu_ms_per_vm']:>10.1f}ms")
    if op.get("controller_gc_ms_per_vm"):
        gcs = op["controller_gc_ms_per_vm"]
        print(f"{'  of which garbage collection':46}{sum(gcs.values()):>10.1f}ms  (by generation: "
              + ", ".join(f"{g}: {v:.2f}" for g, v in gcs.items()) + ")")
    for gen, p in (op.get("controller_gc_pauses") or {}).items():
        longest = p["longest_at_most_ms"]
        print(f"{'    generation ' + gen + ' collections, mean, longest':46}{p['collections']:>10.0f}  "
              f"{p['mean_ms'] or 0.0:.2f} ms, " + (f"<= {longest:g} ms" if longest is not None else "> 5 s"))
    rawc, opc = raw.get("cpu_ms_per_pod") or {}, op.get("cpu_ms_per_vm") or {}
    if opc:
        print("CPU per VM / per pod, by process (ms):")
        for key in sorted(set(rawc) | set(opc), key=lambda k: -(opc.get(k) or 0.0)):
            if max(opc.get(key, 0.0), rawc.get(key, 0.0)) >= 0.05:
                print(f"  {key:44}{opc.get(key, 0.0):>10.2f}{rawc.get(key, 0.0):>12.2f}")
        print(f"  {'all':44}{sum(opc.values()):>10.2f}{sum(rawc.values()):>12.2f}")
    opd = op.get("cpu_details_per_vm") or {}
    if opd:
        print("  of it user / system CPU (ms), and context switches voluntary / involuntary, per VM:")
        for key in sorted(opd, key=lambda k: -(opc.get(k) or 0.0)):
            d = opd[key]
            if (opc.get(key) or 0.0) >= 0.5:
                print(f"    {key:42}{d.get('user_ms', 0.0):>8.2f} /{d.get('system_ms', 0.0):>6.2f}"
                      f"{d.get('voluntary_switches', 0.0):>10.1f} /{d.get('involuntary_switches', 0.0):>6.1f}")
    print(f"apiserver requests: {rq['per_vm']:.1f} per VM ({rq['total']} in all); without time-based traffic "
          f"(leases, heartbeats, inventory rounds: {rq['time_based']}): {rq['per_vm_without_time_based']:.1f} per VM")
    for key, v in rq["by_verb_resource_per_vm"].items():
        if v >= 0.01:
            print(f"  {key:44}{v:>8.2f}")
    if "conflicts_per_vm" in rq:
        print(f"  of them refused with 409 Conflict: {sum(rq['conflicts_per_vm'].values()):.3f} per VM"
              + "".join(f"; {k} {v:.3f}" for k, v in rq["conflicts_per_vm"].items()))
    if op.get("watch_per_vm"):
        print("watch events sent per VM, to all watchers (events, KiB):")
        for resource, e in op["watch_per_vm"].items():
            if e["events"] >= 0.01:
                print(f"  {resource:44}{e['events']:>8.2f}{e['bytes'] / 1024:>10.1f}")
    print("RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in res["rss_mib"].items()))


def main() -> None:
    bench_main(__doc__, run, ("-n",), 1000, _report,
               (("--keep", "leave the VMs in place (e.g. to inspect the controller, or before `sandbox down`)"),
                ("--py-spy", "sample every controller replica with py-spy (on PATH) from the first create to all "
                             "placed: collapsed stacks in STATE_DIR/py-spy-<replica>-<N>.txt (a profile, not a "
                             "timing: the samples cost the replicas a little CPU)"),
                ("--pprof", "kube-apiserver's CPU profile over each phase, in 10 s windows: "
                            "STATE_DIR/pprof-apiserver-<raw|operator>-<N>-<i>.pb.gz (needs `failovervm sandbox up "
                            "--profiling`; two sizes per VM with benchmarks.profile_compare), and its live heap after "
                            "each phase: STATE_DIR/pprof-apiserver-heap-<raw|operator>-<N>.pb.gz")))


if __name__ == "__main__":
    main()
