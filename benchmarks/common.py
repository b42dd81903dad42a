"""Shared helpers for the benchmarks: sandbox access, percentiles, output."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from failovervm import API_GROUP, API_VERSION, kubeclient

MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[k]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": statistics.fmean(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


class SandboxHandle:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.data: dict[str, Any] = json.loads((state_dir / "sandbox.json").read_text())
        self.kubeconfig = state_dir / "kubeconfig"
        self.api = kubeclient.ApiClient(kubeclient.Configuration.from_kubeconfig(self.kubeconfig))
        self.custom = kubeclient.CustomObjectsApi(self.api)
        self.core = kubeclient.CoreV1Api(self.api)

    def uri(self, node: str) -> str:
        return str(next(h["uri"] for h in self.data["libvirt"] if h["node"] == node))



class Timeline:
    """Watches that stamp every change of some objects with the time it reached this process
    (time.perf_counter, like the benchmarks' own clocks): where the time of an operation goes.

    `start()` lists each kind and watches it from that resourceVersion, each on its own client and
    thread, until `stop()`. Start it a second or so before the first operation it is to time: a
    watch connecting late would deliver early changes late. Kinds: "pods" and "failovervms" (in
    `namespace`), "vfclaims" and "events" (events.k8s.io/v1 in `namespace`).

    Both sides of a comparison are stamped the same way (arrival of the watch event), so what the
    watch itself adds cancels out of differences such as creation -> binding."""

    KINDS = ("pods", "failovervms", "vfclaims", "events")

    def __init__(self, sb: SandboxHandle, namespace: str, kinds: tuple[str, ...] = KINDS) -> None:
        self.sb, self.namespace, self.kinds = sb, namespace, kinds
        self.records: list[tuple[float, str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watches: list[kubeclient.Watch] = []
        self._threads: list[threading.Thread] = []

    def _path(self, kind: str) -> str:
        if kind == "pods":
            return kubeclient.core_path("pods", namespace=self.namespace)
        if kind == "failovervms":
            return kubeclient.custom_path(API_GROUP, API_VERSION, "failovervms", namespace=self.namespace)
        if kind == "vfclaims":
            return kubeclient.custom_path(API_GROUP, API_VERSION, "vfclaims")
        if kind == "events":
            return kubeclient.custom_path("events.k8s.io", "v1", "events", namespace=self.namespace)
        raise ValueError(kind)

    def _run(self, kind: str) -> None:
        api = kubeclient.ApiClient(kubeclient.Configuration.from_kubeconfig(self.sb.kubeconfig))
        path = self._path(kind)
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = api.request("GET", path)["metadata"]["resourceVersion"]
                w = kubeclient.Watch(api)
                self._watches.append(w)
                for ev in w.stream(path, resource_version=rv, timeout_seconds=120, allow_watch_bookmarks=True):
                    t = time.perf_counter()
                    obj = ev["object"]
                    if ev["type"] == "ERROR":  # an expired resourceVersion (410 Gone): list again
                        rv = None
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        with self._lock:
                            self.records.append((t, kind, ev["type"], obj))
                    if self._stop.is_set():
                        break
            except Exception:  # a dropped connection: list again
                rv = None
                if not self._stop.is_set():
                    time.sleep(0.2)

    def start(self, settle: float = 1.0) -> Timeline:
        for kind in self.kinds:
            th = threading.Thread(target=self._run, args=(kind,), name=f"timeline-{kind}", daemon=True)
            th.start()
            self._threads.append(th)
        time.sleep(settle)
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in self._watches:
            w.stop()

    def of(self, kind: str, pred: Callable[[str, dict[str, Any]], bool]) -> list[tuple[float, str, dict[str, Any]]]:
        """(arrival, event type, object) of `kind`'s changes that `pred(type, obj)` accepts, in order."""
        with self._lock:
            return [(t, typ, obj) for t, k, typ, obj in self.records if k == kind and pred(typ, obj)]

    def first(self, kind: str, pred: Callable[[str, dict[str, Any]], bool]) -> float | None:
        """Arrival of the first change of `kind` that `pred(type, obj)` accepts."""
        found = self.of(kind, pred)
        return found[0][0] if found else None


# Keeps the VMs of a benchmark off the nodes it does not want them on.
HOLD_TAINT = {"key": "failovervm.io/bench-hold", "value": "yes", "effect": "NoSchedule"}


def list_vms(sb: SandboxHandle, ns: str) -> list[dict[str, Any]]:
    return list(sb.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms")["items"])


def set_taint(sb: SandboxHandle, node: str, taint: dict[str, str], on: bool) -> None:
    """Add (on) or remove the taint with `taint`'s key on the node, keeping its other taints."""
    obj = sb.core.read_node(node)
    body_taints = [{k: t[k] for k in ("key", "value", "effect") if k in t}
                   for t in (obj.get("spec") or {}).get("taints") or [] if t.get("key") != taint["key"]]
    if on:
        body_taints.append(taint)
    sb.core.patch_node(node, {"spec": {"taints": body_taints or None}})


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "qemu": qemu}


def wait(pred: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def _ignore_conflict(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        if getattr(exc, "status", None) != 409:
            raise


def ensure_namespace(sb: SandboxHandle, name: str) -> None:
    """The namespace, with its own test images in <images dir>/<name>/ (a namespace's VMs may only
    use files there, docs/security.md)."""
    from failovervm_sandbox import images

    images.provision_namespace(Path(sb.data["images_dir"]), name)
    _ignore_conflict(sb.core.create_namespace, {"metadata": {"name": name}})


def ensure_pool(sb: SandboxHandle, name: str, pfs: list[str]) -> None:
    """Create the VFPool (on every sandbox node, standby on the sandbox bridge) and wait until the
    controller reports free VFs in it."""
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "VFPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"failovervm.io/sandbox-node": "true"},
            "pfNames": pfs,
            "standby": {"type": "bridge", "source": sb.data["bridge"]},
        },
    }
    _ignore_conflict(sb.custom.create_cluster_custom_object, API_GROUP, API_VERSION, "vfpools", body)
    wait(
        lambda: (
            (
                (sb.custom.get_cluster_custom_object(API_GROUP, API_VERSION, "vfpools", name).get("status") or {}).get(
                    "totals"
                )
                or {}
            ).get("free", 0)
            > 0
        ),
        60,
        f"free VFs in pool {name}",
        0.5,
    )


def halt_vm(name: str, namespace: str, image: str, pool: str) -> dict[str, Any]:
    """A 32 MiB, 1 vCPU FailoverVM booting the halt sector."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "FailoverVM",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "running": True,
            "cpu": 1,
            "memory": "32Mi",
            "terminationGracePeriodSeconds": 0,
            "disks": [{"name": "boot", "path": image, "readOnly": True, "bootOrder": 1}],
            "network": {"pool": pool},
        },
    }


def get_vm(sb: SandboxHandle, ns: str, name: str) -> dict[str, Any]:
    return dict(sb.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervms", name))


def migrate_vm(sb: SandboxHandle, ns: str, name: str, mig_name: str, nodes: list[str],
               timeout: float = 300) -> tuple[str, dict[str, Any], float]:
    """Create a FailoverVMMigration of VM `name` to the first of `nodes` it is not on and wait until it
    ends: (the target node, the migration as it ended, wall seconds from the create)."""
    here = get_vm(sb, ns, name)["status"]["nodeName"]
    there = next(n for n in nodes if n != here)
    t0 = time.perf_counter()
    sb.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervmmigrations", {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "FailoverVMMigration",
        "metadata": {"name": mig_name, "namespace": ns}, "spec": {"vmName": name, "targetNode": there}})
    done: dict[str, Any] = {}

    def finished() -> bool:
        done["m"] = sb.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, "failovervmmigrations",
                                                           mig_name)
        return (done["m"].get("status") or {}).get("phase") in ("Succeeded", "Failed", "Aborted")

    wait(finished, timeout, f"migration {mig_name}", interval=0.5)
    return there, done["m"], time.perf_counter() - t0


def raw_copy_xml(xml: str, name: str) -> str:
    """A copy of an operator VM's domain XML for raw libvirt to run next to it: its own name, UUID
    and MAC, no failovervm metadata (the agents leave it alone) and no serial log or console (it
    must not write into the operator VM's console log)."""
    el = etree.fromstring(xml.encode())
    el.find("name").text = name
    el.find("uuid").text = str(uuid.uuid4())
    md = el.find("metadata")
    if md is not None:
        el.remove(md)
    for mac in el.iterfind("devices/interface/mac"):
        mac.set("address", "52:54:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3]))
    for dev in [*el.iterfind("devices/serial"), *el.iterfind("devices/console")]:
        el.find("devices").remove(dev)
    return etree.tostring(el, encoding="unicode")


RAW_MIGRATION_DEADLINE_S = 600.0


def migrate_bounded(dom: libvirt.virDomain, uri: str, params: dict[str, Any], flags: int,
                    deadline_s: float = RAW_MIGRATION_DEADLINE_S) -> None:
    """dom.migrateToURI3(uri, params, flags), raising its libvirtError as usual, but never hanging
    the caller: libvirt's call waits on a condition no signal interrupts (so pytest-timeout could
    not stop it either). It runs in a daemon thread; past `deadline_s` its job is aborted, and if the
    call still has not returned 60 s later, TimeoutError says so (the thread is left behind)."""
    outcome: dict[str, BaseException | None] = {}

    def call() -> None:
        try:
            dom.migrateToURI3(uri, params, flags)
            outcome["error"] = None
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    t = threading.Thread(target=call, name=f"migrate-{dom.name()}", daemon=True)
    t.start()
    t.join(deadline_s)
    if t.is_alive():
        try:
            dom.abortJob()
        except libvirt.libvirtError:
            pass
        t.join(60.0)
        if t.is_alive():
            raise TimeoutError(f"migrateToURI3 of {dom.name()} to {uri} did not end within {deadline_s:.0f} s "
                               "nor 60 s after abortJob")
    error = outcome.get("error")
    if error is not None:
        raise error


def raw_migration(
    sb: SandboxHandle, src: str, dst: str, template_dom: str, rounds: int, settle: float = 0.0
) -> tuple[list[float], list[int]]:
    """Ping-pong a renamed copy of an operator VM's domain between src and dst with libvirt directly.

    The copy gets its own name, UUID and MAC, and no serial log file (it must not write into the
    operator VM's console log); `settle` seconds pass after its start (a Linux guest boots first)."""
    conn = libvirt.open(sb.uri(src))
    name = f"raw-bench-{uuid.uuid4().hex[:8]}"
    dom = conn.defineXML(raw_copy_xml(conn.lookupByName(template_dom).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
                                      name))
    dom.create()
    conn.close()
    time.sleep(settle)
    times, downtimes = [], []
    here, there = src, dst
    try:
        for _ in range(rounds):
            c_src, c_dst = libvirt.open(sb.uri(here)), libvirt.open(sb.uri(there))
            d = c_src.lookupByName(name)
            t0 = time.perf_counter()
            migrate_bounded(d, sb.uri(there), {}, MIGRATE_FLAGS)
            times.append(time.perf_counter() - t0)
            downtimes.append(
                int(c_dst.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED).get("downtime", 0))
            )
            c_src.close()
            c_dst.close()
            here, there = there, here
    finally:
        c = libvirt.open(sb.uri(here))
        try:
            d = c.lookupByName(name)
            d.destroy()
            d.undefine()
        except libvirt.libvirtError:
            pass
        c.close()
    return times, downtimes


def bench_main(doc: str | None, run: Callable[..., dict[str, Any]], count_flags: tuple[str, ...],
               default_count: int, report: Callable[[dict[str, Any]], None],
               switches: tuple[tuple[str, str], ...] = ()) -> None:
    """A benchmark's command line: --state-dir, its count (-n VMs or -r rounds), --json for the
    raw result, else `report` prints the operator's figure next to the raw libvirt one. `switches`,
    (flag, help) pairs such as ("--phases", ...), become keyword arguments of `run` (True when given)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", default="/var/lib/failovervm-sandbox")
    ap.add_argument(*count_flags, type=int, default=default_count, dest="count",
                    metavar=count_flags[-1].lstrip("-").upper())
    ap.add_argument("--json", action="store_true")
    for flag, help_ in switches:
        ap.add_argument(flag, action="store_true", help=help_)
    args = ap.parse_args()
    extra = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
             for flag, _ in switches}
    result = run(Path(args.state_dir), args.count, **extra)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
