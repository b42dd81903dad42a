"""The crash matrix (#13): kill -9 the controller or an agent at a named failpoint of placement,
migration, release and deletion (failovervm.failpoints), restart it, and check that everything
converges: no VF claimed twice, no VM with two running domains, no VM lost or stuck (label and
agent finalizer follow status), no migration left unfinished, and a drain afterwards completes.
Each point prints how long convergence took after the kill (docs/reliability.md).

One namespace and small guests (the halting boot image) for the whole matrix, to stay fast."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from failovervm import failpoints, labels
from failovervm import migration as mg
from failovervm.nodehealth import OUT_OF_SERVICE_TAINT
from failovervm_sandbox import images, manager, procs
from tests.conftest import REPO, Sandbox, _cli, controller_keys, restart_operator, wait_for
from tests.e2e.helpers import (
    Sampler,
    apply,
    claims,
    events,
    get_vm,
    libvirt_conn,
    pool_manifest,
    vm_manifest,
    wait_phase,
    wait_webhook,
)

pytestmark = pytest.mark.e2e
POOL = "crash-pool"
NS = "crash"
RESULTS: list[tuple[str, str, float]] = []


def running_domains(sb: Sandbox, dname: str) -> list[str]:
    """The nodes whose libvirt runs domain `dname` (a node that is down runs nothing: `node-down`
    SIGKILLs its QEMU processes, as a power cut would)."""
    out = []
    down = manager.down_nodes(sb.state_dir)
    for n in sb.nodes:
        if n["node"] in down:
            continue
        conn = libvirt_conn(sb, n["node"])
        try:
            if dname in [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]:
                out.append(n["node"])
        finally:
            conn.close()
    return out


def converged(sb: Sandbox, ns: str) -> bool:
    """The invariants, for every VM and migration of `ns`."""
    vms = sb.kubectl_json("-n", ns, "get", "fvm")["items"]
    held = [c for c in claims(sb) if c["spec"]["owner"]["namespace"] == ns]
    for vm in vms:
        st, meta = vm.get("status") or {}, vm["metadata"]
        if meta.get("deletionTimestamp") or st.get("phase") != "Running" or st.get("migration"):
            return False
        node = st.get("nodeName")
        if (meta.get("labels") or {}).get(labels.VM_NODE) != node or labels.AGENT_FINALIZER not in (
                meta.get("finalizers") or []):
            return False
        if running_domains(sb, f"fvm_{ns}_{meta['name']}") != [node]:
            return False  # exactly one running copy, on its node
        mine = [c["metadata"]["name"] for c in held if c["spec"]["owner"]["uid"] == meta["uid"]]
        if mine != [(st.get("vf") or {}).get("claimName")]:
            return False  # exactly its own VF claimed
    if len(held) != len(vms):
        return False
    return all(mg.phase(m) in mg.TERMINAL_PHASES and any(
        c.get("type") == "CleanedUp" and c.get("status") == "True" for c in m["status"].get("conditions") or [])
        for m in sb.kubectl_json("-n", ns, "get", "fvmm")["items"])


@contextlib.contextmanager
def killed_at(sb: Sandbox, component: str, point: str, done: Callable[[], bool] | None = None) -> Iterator[None]:
    """Run `component` ("controller" or an agent's state key) with the failpoint `point` set to
    kill; the body triggers the step; then wait for the kill, restart as usual, and time the
    convergence of the namespace (and `done()`, the step's own end, when given: the invariants
    may also hold for a moment in between)."""
    assert point in failpoints.POINTS
    keys = controller_keys(sb) if component == "controller" else [component]
    argv = procs.cmdline(sb.data[keys[0]]["pid"])
    assert argv, f"{component} is not running"
    for key in keys:
        procs.stop(sb.data[key]["pid"], key.split("-")[0])
    env = {**os.environ, failpoints.ENV: f"{point}=kill", "POD_ID": keys[0]}
    pid = procs.spawn(argv, sb.state_dir / "logs" / f"{keys[0]}-failpoints.log", env=env)
    try:
        if "--webhook-port" in argv:  # the only controller now: its webhook must answer first
            wait_webhook(int(argv[argv.index("--webhook-port") + 1]))
        yield
        wait_for(lambda: not procs.alive(pid), 90, what=f"{component} killed at {point}")
        died = time.monotonic()
    finally:
        procs.stop(pid)
        restart_operator(sb)
    wait_for(lambda: (done is None or done()) and converged(sb, NS), 120, interval=1,
             what=f"convergence after {point}")
    took = time.monotonic() - died
    RESULTS.append((point, component, took))
    print(f"\ncrash matrix: {point} ({component}) converged {took:.1f}s after the kill")


@pytest.fixture(scope="module")
def crash_ns(operator_sandbox: Sandbox) -> Iterator[str]:
    sb = operator_sandbox
    # Not make_namespace: the per-test cleanup would remove it; the whole matrix shares it.
    images.provision_namespace(sb.images_dir, NS)  # its VMs' images (a namespace's own directory)
    sb.kubectl("create", "namespace", NS, check=False)
    apply(sb, pool_manifest(POOL, sb.data["bridge"]))
    try:
        yield NS
    finally:
        for point, component, took in RESULTS:
            print(f"| {point} | {component} | {took:.1f} s |")
        sb.kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=180s", check=False, timeout=200)


def agent_of(sb: Sandbox, node: str) -> str:
    return f"agent-{next(n['index'] for n in sb.nodes if n['node'] == node)}"


def place(sb: Sandbox, name: str) -> dict[str, Any]:
    apply(sb, vm_manifest(name, NS, POOL))
    return wait_phase(sb, NS, name, "Running")


def migrate(sb: Sandbox, name: str) -> None:
    subprocess.Popen([sys.executable, "-m", "failovervm.cli", "migrate", name, "-n", NS,
                      "--kubeconfig", str(sb.kubeconfig)], cwd=REPO, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)


CONTROLLER_POINTS = ["placement.after-claim", "placement.after-status"]
MIGRATION_CONTROLLER_POINTS = ["migration.after-target-claim", "migration.after-target-ready",
                               "migration.cleanup.after-unlock"]
MIGRATION_AGENT_POINTS = ["agent.migrate.after-take", "agent.migrate.mid-transfer", "agent.migrate.after-vm-moved",
                          "agent.migrate.after-label"]


@pytest.mark.parametrize("point", CONTROLLER_POINTS)
def test_placement(operator_sandbox: Sandbox, crash_ns: str, point: str) -> None:
    sb = operator_sandbox
    name = point.split(".")[-1]
    with killed_at(sb, "controller", point):
        apply(sb, vm_manifest(name, NS, POOL))


@pytest.mark.parametrize("point", MIGRATION_CONTROLLER_POINTS)
def test_migration_controller(operator_sandbox: Sandbox, crash_ns: str, point: str) -> None:
    sb = operator_sandbox
    name = "mc-" + point.split(".")[-1]
    place(sb, name)
    with killed_at(sb, "controller", point):
        migrate(sb, name)


@pytest.mark.parametrize("point", MIGRATION_AGENT_POINTS)
def test_migration_agent(operator_sandbox: Sandbox, crash_ns: str, point: str) -> None:
    sb = operator_sandbox
    name = "ma-" + point.split(".")[-1]
    src = place(sb, name)["status"]["nodeName"]
    with killed_at(sb, agent_of(sb, src), point):
        migrate(sb, name)


def test_deletion(operator_sandbox: Sandbox, crash_ns: str) -> None:
    sb = operator_sandbox
    node = place(sb, "del-agent")["status"]["nodeName"]
    with killed_at(sb, agent_of(sb, node), "agent.delete.before-finalizer"):
        sb.kubectl("-n", NS, "delete", "fvm", "del-agent", "--wait=false")
    wait_for(lambda: get_vm(sb, NS, "del-agent") is None, 60, what="del-agent deleted")
    place(sb, "del-ctl")
    with killed_at(sb, "controller", "finalize.before-claims"):
        sb.kubectl("-n", NS, "delete", "fvm", "del-ctl", "--wait=false")
    wait_for(lambda: get_vm(sb, NS, "del-ctl") is None, 60, what="del-ctl deleted")


def _ready(sb: Sandbox, node: str) -> bool:
    conds = sb.kubectl_json("get", "node", node)["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def test_release(operator_sandbox: Sandbox, crash_ns: str) -> None:
    """The controller dies between removing a fenced node's label from a VM and releasing its
    status: the label repair makes the node sweep see the VM again, and it is released."""
    sb = operator_sandbox
    node = place(sb, "rel-fenced")["status"]["nodeName"]
    state = ["--state-dir", str(sb.state_dir)]
    try:
        with killed_at(sb, "controller", "release.after-unlabel"):
            res = _cli("sandbox", "node-down", *state, node)
            assert res.returncode == 0, res.stderr
            sb.kubectl("taint", "node", node, f"{OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute")
        assert (get_vm(sb, NS, "rel-fenced") or {})["status"]["nodeName"] != node
    finally:
        res = _cli("sandbox", "node-up", *state, node)
        sb.kubectl("taint", "node", node, f"{OUT_OF_SERVICE_TAINT}-", check=False)
        sb.data = Sandbox(sb.state_dir).data
    assert res.returncode == 0, res.stderr
    wait_for(lambda: _ready(sb, node), 60, what=f"{node} Ready again")
    wait_for(lambda: converged(sb, NS), 60, what="converged with the node back")


def _place_only_on(sb: Sandbox, node: str, name: str, **spec: Any) -> None:
    """Create a VM while every other node carries a (non-evacuating) NoSchedule taint."""
    others = [n["node"] for n in sb.nodes if n["node"] != node]
    for other in others:
        sb.kubectl("taint", "node", other, "fvm-test/hold=yes:NoSchedule", "--overwrite")
    try:
        apply(sb, vm_manifest(name, NS, POOL, **spec))
        assert wait_phase(sb, NS, name, "Running")["status"]["nodeName"] == node
    finally:
        for other in others:
            sb.kubectl("taint", "node", other, "fvm-test/hold-", check=False)


def test_eviction(operator_sandbox: Sandbox, crash_ns: str) -> None:
    """The agent dies between removing its node label from a VM with evictionStrategy Shutdown on a
    cordoned node and releasing its status: the label comes back from status, the VM boots once
    more on the cordoned node, and the evacuation shuts it down again and releases it."""
    sb = operator_sandbox
    vms = sb.kubectl_json("-n", NS, "get", "fvm")["items"]
    node = min((n["node"] for n in sb.nodes), key=lambda n: sum(v["status"].get("nodeName") == n for v in vms))
    _place_only_on(sb, node, "ev-shutdown", evictionStrategy="Shutdown")
    try:
        def gone() -> bool:  # not just booted once more on the cordoned node
            return ((get_vm(sb, NS, "ev-shutdown") or {}).get("status") or {}).get("nodeName") not in (None, node)

        with killed_at(sb, agent_of(sb, node), "agent.evict.after-unlabel", done=gone):
            sb.kubectl("cordon", node)
    finally:
        sb.kubectl("uncordon", node, check=False)


BIG = "big"  # a 4 GiB guest (untouched memory): migrations limited to 1 MiB/s last long enough to act mid-way


def _big(sb: Sandbox) -> str:
    """The node of the shared slow-migrating VM, created on first use."""
    vm = get_vm(sb, NS, BIG)
    if vm is None:
        apply(sb, vm_manifest(BIG, NS, POOL, memory="4Gi"))
    return str(wait_phase(sb, NS, BIG, "Running")["status"]["nodeName"])


def _slow_migration(sb: Sandbox, target: str, name: str) -> None:
    """A migration of BIG limited to 1 MiB/s; returns once memory is being copied (the Progress
    condition), so the test acts mid-transfer rather than while the target launches QEMU."""
    apply(sb, {"apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVMMigration",
               "metadata": {"name": name, "namespace": NS},
               "spec": {"vmName": BIG, "targetNode": target, "bandwidthMiBps": 1}})

    def copying() -> bool:
        st = sb.kubectl_json("-n", NS, "get", "fvmm", name).get("status") or {}
        return st.get("phase") == "Running" and any(c["type"] == "Progress" for c in st.get("conditions") or [])

    wait_for(copying, 60, interval=0.2, what=f"migration {name} copying memory")


def _libvirt_key(sb: Sandbox, node: str) -> str:
    return f"libvirt-{next(n['index'] for n in sb.nodes if n['node'] == node)}"


def _kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not procs.alive(pid), 10, interval=0.1, what=f"pid {pid} gone")


def test_migration_failed(operator_sandbox: Sandbox, crash_ns: str) -> None:
    """The source agent dies between unlocking the VM of a failed migration (its target's libvirtd
    was killed) and recording the failure: the controller finishes the orphaned migration as
    Failed."""
    sb = operator_sandbox
    src = _big(sb)
    target = next(n["node"] for n in sb.nodes if n["node"] != src)
    with killed_at(sb, agent_of(sb, src), "agent.migrate.failed.after-unlock"):
        _slow_migration(sb, target, "big-failed")
        _kill9(sb.data[_libvirt_key(sb, target)]["pid"])  # killed_at's restart brings it back
    mig = sb.kubectl_json("-n", NS, "get", "fvmm", "big-failed")
    # The VM no longer named it: the controller's orphan repair recorded the outcome from the VM.
    assert (mg.phase(mig), mig["status"].get("reason")) == (mg.FAILED, "OwnerLost"), mig["status"]
    assert (get_vm(sb, NS, BIG) or {})["status"]["nodeName"] == src


class TwoCopies(Sampler):
    """Samples, while a test runs, whether a VM's domain ever runs (not paused) on two nodes at
    once; a node whose libvirtd does not answer is skipped for that sample."""

    interval = 0.2

    def __init__(self, sb: Sandbox, dname: str) -> None:
        super().__init__()
        self.sb, self.dname = sb, dname
        self.seen: list[list[str]] = []
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # a node's libvirtd may be down

    def sample(self) -> None:
        on = []
        for n in self.sb.nodes:
            try:
                conn = libvirt.open(n["uri"])
            except libvirt.libvirtError:
                continue
            try:
                if conn.lookupByName(self.dname).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                    on.append(n["node"])
            except libvirt.libvirtError:
                pass
            finally:
                conn.close()
        if len(on) > 1:
            self.seen.append(on)


RESTARTS = ["apiserver", "source-libvirtd", "target-libvirtd"]


@pytest.mark.parametrize("what", RESTARTS)
def test_restart_mid_migration(operator_sandbox: Sandbox, crash_ns: str, what: str) -> None:
    """kill -9 of the kube-apiserver, or of the source's or the target's libvirtd, while a live
    migration copies memory, then its restart (the way the sandbox started it). The migration ends
    Succeeded or Failed with a reason, within its timeout; the VM never runs on two nodes; no VF is
    left claimed; the next migration works."""
    sb = operator_sandbox
    src = _big(sb)
    target = next(n["node"] for n in sb.nodes if n["node"] != src)
    name = f"big-{what}"
    key = {"apiserver": "apiserver", "source-libvirtd": _libvirt_key(sb, src),
           "target-libvirtd": _libvirt_key(sb, target)}[what]
    with TwoCopies(sb, f"fvm_{NS}_{BIG}") as copies:
        _slow_migration(sb, target, name)
        _kill9(sb.data[key]["pid"])
        died = time.monotonic()
        time.sleep(2)  # down for a moment, as in a crash-restart loop
        restart_operator(sb)
        mig = wait_for(lambda: mg.phase(m := sb.kubectl_json("-n", NS, "get", "fvmm", name)) in mg.TERMINAL_PHASES
                       and m, 180, what=f"migration {name} finished")
        wait_for(lambda: converged(sb, NS), 120, interval=1, what=f"convergence after restarting the {what}")
        took = time.monotonic() - died
    st = mig["status"]
    assert st["phase"] in (mg.SUCCEEDED, mg.FAILED), st
    assert st["phase"] == mg.SUCCEEDED or st.get("reason"), st
    if what == "source-libvirtd" and st["phase"] == mg.FAILED:
        # The cause is named (found by this test: it used to say the agent had restarted).
        assert st["reason"] == "LibvirtConnectionLost", st
    assert not copies.seen, f"the VM ran on two nodes at once: {copies.seen}"
    vm = get_vm(sb, NS, BIG) or {}
    assert vm["status"]["nodeName"] == (target if st["phase"] == mg.SUCCEEDED else src)
    outcome = f"{st['phase']} {st.get('reason') or ''}".strip()
    RESULTS.append((f"{what} restarted mid-migration: {outcome}", what, took))
    print(f"\ncrash matrix: {what} restarted mid-migration: {outcome} ({st.get('message')}); converged "
          f"{took:.1f}s after the kill")
    # The next migration works (at full speed).
    res = subprocess.run([sys.executable, "-m", "failovervm.cli", "migrate", BIG, "-n", NS, "--wait",
                          "--kubeconfig", str(sb.kubeconfig)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: converged(sb, NS), 60, what="converged after the next migration")


def test_zz_big_vm_removed(operator_sandbox: Sandbox, crash_ns: str) -> None:
    """The 4 GiB guest leaves before the drain below (which tests the other VMs)."""
    sb = operator_sandbox
    sb.kubectl("-n", NS, "delete", "fvm", BIG, "--ignore-not-found", "--timeout=120s", timeout=150)
    wait_for(lambda: converged(sb, NS), 60, what="converged without the big VM")


def test_a_drain_after_the_matrix_completes(operator_sandbox: Sandbox, crash_ns: str) -> None:
    sb = operator_sandbox
    vms = sb.kubectl_json("-n", NS, "get", "fvm")["items"]
    assert vms and converged(sb, NS)
    # The node of the evictionStrategy Shutdown VM (kubectl drain retries an eviction answered 429
    # by pod name: the VM's next pod must not be evicted again), else the busiest.
    shutdown = [v["status"]["nodeName"] for v in vms if v["metadata"]["name"] == "ev-shutdown"]
    busiest = shutdown[0] if shutdown else max({v["status"]["nodeName"] for v in vms},
                                               key=lambda n: sum(v["status"]["nodeName"] == n for v in vms))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res = sb.kubectl("drain", busiest, "--ignore-daemonsets", "--timeout=240s", check=False, timeout=260)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        wait_for(lambda: converged(sb, NS), 60, what="converged after the drain")
        assert all(v["status"]["nodeName"] != busiest for v in sb.kubectl_json("-n", NS, "get", "fvm")["items"])
        if shutdown:  # shut down on the drained node only, never chased to the next one
            chased = [e["message"] for e in events(sb, NS, "Evicting", "ev-shutdown")
                      if (e.get("lastTimestamp") or "") >= started and f"node {busiest} " not in e["message"]]
            assert not chased, chased
    finally:
        sb.kubectl("uncordon", busiest, check=False)
