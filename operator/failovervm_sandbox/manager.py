"""`failovervm sandbox up|down|status`: orchestrates the sandbox's components.

Every process is started detached, its PID recorded in <state-dir>/sandbox.json,
and stopped by that PID. `up` is idempotent: components that still run are left
alone, dead ones are restarted with the same ports and data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from failovervm_sandbox import (
    SandboxError,
    binaries,
    controlplane,
    images,
    libvirthost,
    network,
    ownership,
    procs,
    sriov,
)
from failovervm_sandbox.state import (
    DEFAULT_STATE_DIR,
    Options,
    State,
    ensure_component,
    node_name,
    say,
)


def _node_address(base: str, i: int) -> str:
    return str(ipaddress.ip_address(base) + i)


def _check_prereqs() -> None:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (mount namespaces for libvirtd, QEMU as root); run with sudo")
    for tool in ("unshare", "mount", "ip"):
        if not shutil.which(tool):
            raise SandboxError(f"{tool} not found in PATH (util-linux / iproute2)")
    if not os.path.exists(libvirthost.LIBVIRTD):
        raise SandboxError("libvirtd not found: run hack/install-deps.sh (Debian libvirt-daemon)")
    try:
        import pwd

        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        raise SandboxError("the libvirt-qemu user must exist (useradd -r libvirt-qemu)") from None


def up(opts: Options) -> State:
    """Start whatever of the sandbox is not running, in dependency order."""
    _check_prereqs()
    t_start = time.monotonic()
    state = _record_settings(opts)
    _start_control_plane(state, opts)
    images.ensure_images(opts.images_dir)
    images.provision_namespace(opts.images_dir, "default")  # the examples' namespace
    _start_libvirt_hosts(state, opts)
    _connect_standby_network(state, opts)
    _register_nodes(state, opts)
    if opts.operator:
        from failovervm_sandbox import operator_procs

        operator_procs.ensure(state, opts)
    state.data["up_seconds"] = round(time.monotonic() - t_start, 1)
    state.save()
    say(opts, f"sandbox is up in {state.data['up_seconds']}s")
    return state


def _record_settings(opts: Options) -> State:
    """The state for `opts`: the running sandbox's shape where `opts` leaves it open (a different
    shape is an error), accel, pinned versions and the control plane's ports (chosen once)."""
    state_dir = opts.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    state = State(state_dir)
    d = state.data
    opts.nodes = opts.nodes or d.get("nodes") or 2
    opts.vfs_per_node = opts.vfs_per_node or d.get("vfs_per_node") or 8
    opts.pfs_per_node = opts.pfs_per_node or d.get("pfs_per_node") or 1
    opts.virtual_nodes = opts.virtual_nodes if opts.virtual_nodes is not None else d.get("virtual_nodes") or 0
    if "nodes" in d and (d["nodes"], d["vfs_per_node"], d.get("pfs_per_node", 1)) != (
            opts.nodes, opts.vfs_per_node, opts.pfs_per_node):
        raise SandboxError(
            f"a sandbox with {d['nodes']} nodes x {d.get('pfs_per_node', 1)} PFs x {d['vfs_per_node']} VFs exists "
            f"in {state_dir}; "
            "run `failovervm sandbox down` first to change its shape"
        )
    ownership.claim(state_dir, opts.bridge, _address_base(d) or opts.address_base)
    accel_ok, accel_detail = libvirthost.kvm_usable()
    d.update(
        {
            "nodes": opts.nodes, "vfs_per_node": opts.vfs_per_node, "pfs_per_node": opts.pfs_per_node,
            "virtual_nodes": opts.virtual_nodes, "node_cpu": opts.node_cpu,
            "node_memory": opts.node_memory, "images_dir": str(opts.images_dir.resolve()),
            "accel": "kvm" if accel_ok else "tcg", "accel_detail": accel_detail, "bridge": opts.bridge,
            "versions": binaries.versions(),
            "profiling": bool(opts.profiling or d.get("profiling")),
        }
    )
    d.setdefault("etcd", {}).setdefault("client_port", controlplane.free_port())
    d["etcd"].setdefault("peer_port", controlplane.free_port())
    d.setdefault("apiserver", {}).setdefault("port", controlplane.free_port())
    d.setdefault("scheduler", {}).setdefault("port", controlplane.free_port())
    state.save()
    return state


def _start_control_plane(state: State, opts: Options) -> None:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with their certificates
    and the admin kubeconfig."""
    d = state.data
    say(opts, "binaries: checking the pinned etcd, kube-apiserver, kube-controller-manager and "
              "kube-scheduler builds")
    bins = binaries.ensure("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    paths = state.cp_paths
    controlplane.generate_pki(paths)
    api_port = d["apiserver"]["port"]
    server = f"https://127.0.0.1:{api_port}"
    controlplane.write_kubeconfig(
        paths.admin_kubeconfig, server, paths.pki / "ca.crt", paths.pki / "admin.crt",
        paths.pki / "admin.key", "sandbox-admin",
    )
    ensure_component(
        state, "etcd", "etcd",
        lambda: controlplane.start_etcd(bins["etcd"], paths, d["etcd"]["client_port"], d["etcd"]["peer_port"]),
        opts, "etcd",
    )
    ensure_component(
        state, "apiserver", "kube-apiserver",
        lambda: controlplane.start_apiserver(bins["kube-apiserver"], paths, api_port, d["etcd"]["client_port"],
                                             profiling=bool(d.get("profiling"))),
        opts, f"kube-apiserver ({server})",
    )
    if not controlplane.apiserver_ready(paths, api_port):
        controlplane.wait_http(f"{server}/readyz", 60, controlplane._ssl_context(paths), what="kube-apiserver")
    ensure_component(
        state, "controller_manager", "kube-controller-manager",
        lambda: controlplane.start_controller_manager(bins["kube-controller-manager"], paths, server),
        opts, "kube-controller-manager",
    )
    sched_port = d["scheduler"]["port"]
    ensure_component(
        state, "scheduler", "kube-scheduler",
        lambda: controlplane.start_scheduler(bins["kube-scheduler"], paths, server, sched_port),
        opts, f"kube-scheduler (https://127.0.0.1:{sched_port})",
    )


def _address_base(d: dict[str, Any]) -> str | None:
    """The address base of a sandbox that has run (node i has base + i), else None."""
    hosts = d.get("libvirt") or []
    return _node_address(hosts[0]["address"], -int(hosts[0]["index"])) if hosts else None


def _host_entry(state: State, opts: Options, i: int) -> dict[str, Any]:
    """Node i's record (address, libvirt root, URI, sysfs root), made by the first `up`."""
    hosts_state = state.data.setdefault("libvirt", [])
    if len(hosts_state) < i:
        addr = _node_address(opts.address_base, i)
        root = state.dir / "nodes" / node_name(i)
        hosts_state.append(
            {
                "index": i, "node": node_name(i), "address": addr, "root": str(root / "libvirt"),
                "uri": f"qemu+tcp://{addr}/system", "sysfs_root": str(root / "sysfs"),
            }
        )
    entry: dict[str, Any] = hosts_state[i - 1]
    return entry


def _start_libvirt_hosts(state: State, opts: Options) -> None:
    """Per node: its simulated SR-IOV sysfs, its libvirtd's private root, its bridge (uplinked to the
    fabric bridge) and the daemon itself; nodes stopped by `node-down` stay down."""
    d = state.data
    if network.ensure_bridge(opts.bridge):
        d["bridge_created"] = True
    launched: list[tuple[libvirthost.LibvirtHost, int, float]] = []
    for i in range(1, d["nodes"] + 1):
        entry = _host_entry(state, opts, i)
        host = libvirthost.LibvirtHost(i, entry["address"], Path(entry["root"]))
        if not (Path(entry["sysfs_root"]) / "SIMULATED").exists():
            sriov.create(Path(entry["sysfs_root"]), d["vfs_per_node"], entry["node"], d["pfs_per_node"])
        libvirthost.prepare(host)
        network.ensure_node_bridge(opts.bridge, i)
        key = f"libvirt-{i}"
        if entry["node"] in d.get("down_nodes", []):
            say(opts, f"libvirtd {entry['node']}: node is down (`failovervm sandbox node-up {entry['node']}`)")
            continue
        if procs.alive(d.get(key, {}).get("pid"), "libvirtd"):
            say(opts, f"libvirtd {entry['node']}: already running (pid {d[key]['pid']})")
            continue
        # Start the first daemon alone when the capabilities cache is cold, so the
        # others can start from its probe; then start the rest in parallel.
        pid = libvirthost.launch(host)
        d[key] = {"pid": pid}
        entry["pid"] = pid
        state.save()
        launched.append((host, pid, time.monotonic()))
        if not any(libvirthost.caps_cache().glob("*.xml")):
            libvirthost.wait_ready(host, pid)
            libvirthost.save_caps(host)
    for host, pid, t0 in launched:
        libvirthost.wait_ready(host, pid)
        say(opts, f"libvirtd {node_name(host.index)} ({host.uri}, {d['accel']}): started (pid {pid}) "
                  f"in {time.monotonic() - t0:.1f}s")


def _connect_standby_network(state: State, opts: Options) -> None:
    """The libvirt network for the VMs' virtio standby NICs on each running node's bridge."""
    for host in state.hosts():
        if node_name(host.index) not in state.data.get("down_nodes", []):
            network.ensure_libvirt_network(host.uri, network.node_bridge(opts.bridge, host.index))
    say(opts, f"standby network: libvirt network {network.STANDBY_NETWORK} on bridge "
              f"{network.node_bridge(opts.bridge, 1)}.. per node, uplinked to {opts.bridge}")


def _register_nodes(state: State, opts: Options) -> None:
    """A Node object per host, and the heartbeat process that keeps them Ready as a kubelet would."""
    from failovervm import kubeclient

    paths = state.cp_paths
    api = kubeclient.ApiClient(kubeclient.Configuration.from_kubeconfig(paths.admin_kubeconfig))
    version = controlplane.apiserver_version(paths, state.data["apiserver"]["port"])
    from failovervm_sandbox import nodes as nodes_mod

    core = kubeclient.CoreV1Api(api)
    nodes_mod.register(core, state.sandbox_nodes(), version)
    say(opts, f"nodes: registered {', '.join(n.name for n in state.sandbox_nodes())}")
    from failovervm_sandbox import virtualnodes

    virtual = state.virtual_nodes()
    if virtual:
        virtualnodes.create_trees(virtual, state.data["vfs_per_node"], state.data["pfs_per_node"])
        nodes_mod.register(core, virtual, version)
        virtualnodes.label(core, virtual)
        say(opts, f"virtual nodes: registered {len(virtual)} agent-less nodes ({virtual[0].name}..) with "
                  f"{state.data['vfs_per_node']} simulated VFs per PF, published by the heartbeat")
    removed = virtualnodes.remove_others(core, virtual)
    if removed:
        say(opts, f"virtual nodes: removed {', '.join(removed)}")
    heartbeat = state.data.get("heartbeat") or {}
    if heartbeat.get("pid") and heartbeat.get("virtual_nodes", 0) != len(virtual):
        procs.stop(heartbeat["pid"], "heartbeat")  # restarted below for the new set of nodes
    ensure_component(
        state, "heartbeat", "heartbeat",
        lambda: procs.spawn(
            [sys.executable, "-m", "failovervm.cli", "sandbox", "heartbeat", "--state-dir", str(state.dir)],
            paths.logs / "heartbeat.log",
        ),
        opts, "node heartbeat",
    )
    state.data["heartbeat"]["virtual_nodes"] = len(virtual)
    state.save()


def down(opts: Options) -> None:
    """Stop everything `up` started (by PID), destroy its domains and remove its state. Idempotent."""
    state_dir = opts.state_dir.resolve()
    state = State(state_dir)
    d = state.data
    if not d:
        say(opts, f"no sandbox state in {state_dir}; nothing to stop")
        if state_dir.exists() and state_dir != DEFAULT_STATE_DIR:
            shutil.rmtree(state_dir, ignore_errors=True)
        return
    from failovervm_sandbox import operator_procs

    operator_procs.stop(state)
    procs.stop(d.get("heartbeat", {}).get("pid"), "heartbeat")
    for host in state.hosts():
        libvirthost.stop(host, d.get(f"libvirt-{host.index}", {}).get("pid"))
        say(opts, f"libvirtd node {host.index}: stopped")
    for key, marker in (("scheduler", "kube-scheduler"), ("controller_manager", "kube-controller-manager"),
                        ("apiserver", "kube-apiserver"), ("etcd", "etcd")):
        if procs.stop(d.get(key, {}).get("pid"), marker):
            say(opts, f"{key}: stopped")
    if ownership.owns_bridge(state_dir, d["bridge"]):
        for host in state.hosts():
            network.remove_node_bridge(d["bridge"], host.index)
        if d.get("bridge_created"):
            network.remove_link(d["bridge"])
    else:
        say(opts, f"bridge {d['bridge']}: left alone, another running sandbox owns it")
    ownership.release(state_dir, d["bridge"], _address_base(d) or "")
    # Remove state but keep the shared image directory if it lives inside the state dir.
    images_dir = Path(d.get("images_dir", ""))
    for child in state_dir.iterdir():
        if child.resolve() == images_dir.resolve():
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    say(opts, f"sandbox in {state_dir} is down")


def _node_entry(state: State, name: str) -> dict[str, Any]:
    for entry in state.data.get("libvirt", []):
        if entry["node"] == name:
            return dict(entry)
    known = ", ".join(h["node"] for h in state.data.get("libvirt", []))
    raise SandboxError(f"no sandbox node {name!r} (nodes: {known})")


def down_nodes(state_dir: Path) -> set[str]:
    """Nodes `node-down` stopped (their heartbeat is not posted)."""
    return set(State(state_dir).data.get("down_nodes", []))


def node_down(opts: Options, name: str) -> None:
    """Simulate a machine failure: the node's VMs die (QEMU SIGKILLed, as in a power cut), its
    libvirtd and agent stop, and its heartbeat stops, so the node goes NotReady. Nothing is
    cleaned up: the domains stay defined, as on a real disk that comes back."""
    import signal

    state = State(opts.state_dir.resolve())
    entry = _node_entry(state, name)
    d = state.data
    d["down_nodes"] = sorted({*d.get("down_nodes", []), name})
    state.save()
    procs.stop(d.get(f"agent-{entry['index']}", {}).get("pid"), "agent")
    host = next(h for h in state.hosts() if h.index == entry["index"])
    killed = libvirthost.qemu_pids(host)
    for qpid in killed:
        try:
            os.kill(qpid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    procs.stop(d.get(f"libvirt-{entry['index']}", {}).get("pid"), "libvirtd")
    # What node-lifecycle-controller writes once the grace period passes without a heartbeat.
    from failovervm import kubeclient
    from failovervm_sandbox import nodes as nodes_mod

    api = kubeclient.ApiClient(kubeclient.Configuration.from_kubeconfig(state.kubeconfig))
    now = dt.datetime.now(dt.UTC).isoformat()
    kubeclient.CoreV1Api(api).patch_node_status(name, {"status": {"conditions": [{
        "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
        "message": "Kubelet stopped posting node status (failovervm sandbox node-down).",
        "lastHeartbeatTime": now, "lastTransitionTime": now}]}}, content_type=nodes_mod.STRATEGIC_MERGE)
    say(opts, f"node {name}: down ({len(killed)} QEMU process(es) killed, libvirtd and agent stopped, "
              "heartbeat stopped; Ready=Unknown)")


def node_up(opts: Options, name: str) -> State:
    """Bring a node stopped by `node-down` back: libvirtd, its agent and its heartbeat."""
    state = State(opts.state_dir.resolve())
    _node_entry(state, name)
    d = state.data
    d["down_nodes"] = sorted(set(d.get("down_nodes", [])) - {name})
    state.save()
    # Restart with the running sandbox's own settings, not the command line's defaults.
    first = d["libvirt"][0]
    state = up(dataclasses.replace(
        opts, bridge=d["bridge"], images_dir=Path(d["images_dir"]), node_cpu=d["node_cpu"],
        node_memory=d["node_memory"], address_base=_node_address(first["address"], -int(first["index"]))))
    from failovervm import kubeclient
    from failovervm_sandbox import nodes as nodes_mod

    api = kubeclient.ApiClient(kubeclient.Configuration.from_kubeconfig(state.kubeconfig))
    nodes_mod.post_ready(kubeclient.CoreV1Api(api), name)
    say(opts, f"node {name}: up")
    return state


def status(opts: Options) -> dict[str, Any]:
    """Per-component status; `ok` is True when every component runs."""
    state = State(opts.state_dir.resolve())
    d = state.data
    rows: list[dict[str, Any]] = []
    if not d:
        return {"ok": False, "state_dir": str(state.dir), "components": [], "message": "no sandbox here"}

    def row(name: str, pid: int | None, marker: str, detail: str, healthy: bool | None = None) -> None:
        running = procs.alive(pid, marker)
        ok = running if healthy is None else (running and healthy)
        rows.append({"component": name, "pid": pid, "running": running, "ok": ok,
                     "rss_mib": round(procs.rss_kib(pid) / 1024, 1) if running and pid else 0, "detail": detail})

    paths = state.cp_paths
    row("etcd", d.get("etcd", {}).get("pid"), "etcd", f"http://127.0.0.1:{d['etcd']['client_port']}")
    api_port = d["apiserver"]["port"]
    ready = controlplane.apiserver_ready(paths, api_port)
    row("kube-apiserver", d["apiserver"].get("pid"), "kube-apiserver",
        f"https://127.0.0.1:{api_port} {'ready' if ready else 'NOT ready'}", ready)
    row("kube-controller-manager", d.get("controller_manager", {}).get("pid"), "kube-controller-manager", "")
    sched = d.get("scheduler", {})
    if "port" in sched:
        sched_ready = controlplane.scheduler_ready(paths, sched["port"])
        row("kube-scheduler", sched.get("pid"), "kube-scheduler",
            f"https://127.0.0.1:{sched['port']} {'ready' if sched_ready else 'NOT ready'} "
            f"as {controlplane.SCHEDULER_USER}", sched_ready)
    else:
        row("kube-scheduler", None, "kube-scheduler", "not started: run `failovervm sandbox up`")
    virtual = f" + {d['virtual_nodes']} virtual" if d.get("virtual_nodes") else ""
    row("heartbeat", d.get("heartbeat", {}).get("pid"), "heartbeat", f"{d['nodes']} nodes{virtual}")
    for host in state.hosts():
        pid = d.get(f"libvirt-{host.index}", {}).get("pid")
        try:
            ndom = libvirthost.domain_count(host)
            answering = True
        except Exception:
            ndom, answering = 0, False
        qemu_rss = sum(procs.rss_kib(p) for p in libvirthost.qemu_pids(host)) / 1024
        row(f"libvirtd {node_name(host.index)}", pid, "libvirtd",
            f"{host.uri} accel={d['accel']} domains={ndom} qemu_rss={qemu_rss:.0f}MiB"
            + ("" if answering else " NOT answering"), answering)
    from failovervm_sandbox import operator_procs

    rows.extend(operator_procs.status_rows(state))
    total = sum(r["rss_mib"] for r in rows) + sum(
        sum(procs.rss_kib(p) for p in libvirthost.qemu_pids(h)) / 1024 for h in state.hosts()
    )
    return {
        "ok": all(r["ok"] for r in rows),
        "state_dir": str(state.dir),
        "kubeconfig": str(state.kubeconfig),
        "accel": d.get("accel"),
        "accel_detail": d.get("accel_detail"),
        "components": rows,
        "total_rss_mib": round(total, 1),
    }
