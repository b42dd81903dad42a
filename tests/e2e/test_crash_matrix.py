"""The crash matrix (#13): kill -9 the controller or an agent at a named failpoint of placement,
migration, release and deletion (failovervm.failpoints), restart it, and check that everything
converges: no VF claimed twice, no VM with two running domains, no VM lost or stuck (label and
agent finalizer follow status), no migration left unfinished, and a drain afterwards completes.
Each point prints how long convergence took after the kill (docs/reliability.md).

One namespace and small guests (the halting boot image) for the whole matrix, to stay fast."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from failovervm import failpoints, labels
from failovervm import migration as mg
from failovervm_sandbox import images, procs
from tests.conftest import REPO, Sandbox, controller_keys, restart_operator, wait_for
from tests.e2e.helpers import (
    apply,
    claims,
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
    out = []
    for n in sb.nodes:
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
def killed_at(sb: Sandbox, component: str, point: str) -> Iterator[None]:
    """Run `component` ("controller" or an agent's state key) with the failpoint `point` set to
    kill; the body triggers the step; then wait for the kill, restart as usual, and time the
    convergence of the namespace."""
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
    wait_for(lambda: converged(sb, NS), 120, interval=1, what=f"convergence after {point}")
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


def test_a_drain_after_the_matrix_completes(operator_sandbox: Sandbox, crash_ns: str) -> None:
    sb = operator_sandbox
    vms = sb.kubectl_json("-n", NS, "get", "fvm")["items"]
    assert vms and converged(sb, NS)
    busiest = max({v["status"]["nodeName"] for v in vms},
                  key=lambda n: sum(v["status"]["nodeName"] == n for v in vms))
    res = sb.kubectl("drain", busiest, "--ignore-daemonsets", "--timeout=240s", check=False, timeout=260)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        wait_for(lambda: converged(sb, NS), 60, what="converged after the drain")
        assert all(v["status"]["nodeName"] != busiest for v in sb.kubectl_json("-n", NS, "get", "fvm")["items"])
    finally:
        sb.kubectl("uncordon", busiest, check=False)
