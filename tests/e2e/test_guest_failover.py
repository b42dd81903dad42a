"""Failover inside the guest (issue #6): a real Linux guest negotiates failover, keeps it across a
drain, and a guest without net_failover is reported and warned about.

The Linux guest is Debian's cloud kernel with a busybox initramfs (built by `sandbox up`), booted
under TCG by direct kernel boot; its init logs the guest's view of the network to the serial
console. Its standby NIC sits on the libvirt network fvm-standby (a bridge per node, one L2).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from failovervm_sandbox.guestimage import GUEST_CMDLINE, GUEST_INITRD, GUEST_KERNEL
from failovervm_sandbox.network import STANDBY_NETWORK
from tests.conftest import REPO, TEST_IMAGES_DIR, Sandbox, controller_keys, make_namespace, wait_for
from tests.e2e.helpers import apply, condition, events, get_vm, libvirt_conn, vm_manifest, wait_phase

pytestmark = pytest.mark.e2e
POOL = "guest-pool"
TICK = re.compile(rb"fvm-guest: tick n=(\d+)")


def network_pool() -> dict[str, Any]:
    return {
        "apiVersion": "failovervm.io/v1alpha1",
        "kind": "VFPool",
        "metadata": {"name": POOL},
        "spec": {"nodeSelector": {"failovervm.io/sandbox-node": "true"}, "pfNames": ["sbxpf0", "sbxpf1"],
                 "standby": {"type": "network", "source": STANDBY_NETWORK}},
    }


def linux_vm(name: str, ns: str, ip: str, mac: str, peer: str | None = None, **spec: Any) -> dict[str, Any]:
    cmdline = f"{GUEST_CMDLINE} fvm.ip={ip} fvm.tick=2"
    if peer:
        cmdline += f" fvm.peer={peer}"
    body = vm_manifest(name, ns, POOL, memory="128Mi", accel="tcg", disks=[],
                       kernel=f"{TEST_IMAGES_DIR}/{ns}/{GUEST_KERNEL}", initrd=f"{TEST_IMAGES_DIR}/{ns}/{GUEST_INITRD}",
                       cmdline=cmdline, **spec)
    body["spec"]["network"]["mac"] = mac
    del body["spec"]["disks"]
    return body


def console(sb: Sandbox, ns: str, name: str) -> bytes:
    """The serial console log, read as a user would: `failovervm console`."""
    res = subprocess.run([sys.executable, "-m", "failovervm.cli", "console", name, "-n", ns,
                          "--kubeconfig", str(sb.kubeconfig), "--state-dir", str(sb.state_dir)],
                         capture_output=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


def console_until(sb: Sandbox, ns: str, name: str, pred: Any, what: str, timeout: float = 60,
                  fail: bool = True) -> bytes:
    """Poll the console until `pred(log)` holds; returns the log."""
    found: dict[str, bytes] = {}

    def check() -> bool:
        found["log"] = console(sb, ns, name)
        return bool(pred(found["log"]))

    wait_for(check, timeout, interval=1, what=what, fail=fail)
    return found.get("log", b"")


def ticks(log: bytes) -> list[int]:
    return [int(m) for m in TICK.findall(log)]


def failover_ready(sb: Sandbox, ns: str, name: str, status: str, timeout: float = 120) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        vm = get_vm(sb, ns, name)
        c = condition(vm, "FailoverReady")
        return vm if c and c["status"] == status else None

    return dict(wait_for(check, timeout, interval=1, what=f"{ns}/{name} FailoverReady={status}"))


def migrations(sb: Sandbox, ns: str) -> list[dict[str, Any]]:
    return list(sb.kubectl_json("-n", ns, "get", "fvmm")["items"])


def metrics(sb: Sandbox, key: str) -> str:
    import urllib.request

    port = sb.data["operator"][key]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def warned_migrations(sb: Sandbox) -> float:
    """The controllers' counter of migrations that ran without negotiated failover (0 before the
    first), summed over the replicas: whichever is active counted them (#13)."""
    total = 0.0
    for key in controller_keys(sb):
        port_key = "controller_metrics_port" if key == "controller" else f"{key}_metrics_port"
        m = re.search(r'failovervm_migrations_without_failover_total{action="warned"} ([0-9.]+)',
                      metrics(sb, port_key))
        total += float(m[1]) if m else 0.0
    return total


def drain(sb: Sandbox, node: str) -> None:
    res = sb.kubectl("drain", node, "--ignore-daemonsets", "--timeout=300s", timeout=330, check=False)
    assert res.returncode == 0, res.stderr


def test_real_guest_negotiates_failover_and_keeps_it_across_a_drain(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "guest-failover")
    apply(sb, network_pool())
    # No node pinning: a VM pinned to its node could not leave it when the node is drained.
    apply(sb, linux_vm("linux-a", ns, "10.77.0.1/24", "52:54:00:77:00:01"),
          linux_vm("linux-b", ns, "10.77.0.2/24", "52:54:00:77:00:02", peer="10.77.0.1"))
    for name in ("linux-a", "linux-b"):
        wait_phase(sb, ns, name, "Running", timeout=120)
    vm = failover_ready(sb, ns, "linux-a", "True")
    node = vm["status"]["nodeName"]
    index = next(n["index"] for n in sb.nodes if n["node"] == node)
    assert condition(vm, "FailoverReady")["reason"] == "GuestDriverNegotiated"
    assert condition(vm, "RestartRequired") is None  # direct kernel boot: no false "spec changed"
    # Events are posted asynchronously: wait for it rather than racing it.
    wait_for(lambda: events(sb, ns, "FailoverNegotiated", "linux-a"),
             30, what="the FailoverNegotiated event")
    # The printer column shows it.
    table = sb.kubectl("-n", ns, "get", "fvm", "linux-a").stdout
    header, row = table.splitlines()[:2]
    assert row[header.index("FAILOVER"):].split()[0] == "True", table  # the FAILOVER cell, not READY's
    # The guest's own view: a failover master with the virtio standby enslaved to it.
    log = console_until(sb, ns, "linux-a", lambda lg: b"fvm-guest: failover master=" in lg,
                        "the guest's netdev report on the console")
    text = log.decode(errors="replace")
    master = re.search(r"fvm-guest: failover master=(\S+) standby=(\S+)", text)
    assert master, text
    assert re.search(rf"netdev name={re.escape(master[2])} driver=virtio_net .*master={re.escape(master[1])} "
                     rf".*role=standby", text), text
    assert re.search(rf"netdev name={re.escape(master[1])} .*role=failover-master", text), text
    assert text.count("fvm-guest: boot ") == 1
    # The node's agent counts it in its FailoverReady gauge.
    gauge = re.search(rf'failovervm_vms_failover_ready{{node="{node}",status="True"}} (\d+)',
                      metrics(sb, f"agent-{index}_metrics_port"))
    assert gauge and int(gauge[1]) >= 1
    # The standby's host side is the node's bridge behind the libvirt network fvm-standby.
    conn = libvirt_conn(sb, node)
    try:
        xml = conn.lookupByName(vm["status"]["domain"]["name"]).XMLDesc(0)
    finally:
        conn.close()
    assert f"network='{STANDBY_NETWORK}'" in xml and f"bridge='{sb.data['bridge']}n{index}'" in xml, xml

    before = ticks(console_until(sb, ns, "linux-a", lambda lg: len(ticks(lg)) >= 2, "two heartbeat ticks"))
    drain(sb, node)
    moved = wait_phase(sb, ns, "linux-a", "Running")
    assert moved["status"]["nodeName"] != node
    # Still negotiated on the target: the ack lives in the device state that migrated.
    assert condition(failover_ready(sb, ns, "linux-a", "True", timeout=60), "FailoverReady")["status"] == "True"
    mig = [m for m in migrations(sb, ns) if m["spec"]["vmName"] == "linux-a"]
    # Exactly one: concurrent node sweeps once started a second one that failed on the VM's lock.
    assert len(mig) == 1 and mig[-1]["status"]["phase"] == "Succeeded", [m.get("status") for m in mig]
    assert condition(mig[-1], "FailoverReady")["status"] == "True"
    assert not mig[-1]["status"].get("warnings")  # the agent's check just before the transfer agreed
    assert mig[-1]["status"]["failoverPolicy"] == "Warn"
    # The console log continued: one boot, and the tick counter went on past the pre-drain ticks.
    after = ticks(console_until(sb, ns, "linux-a", lambda lg: max(ticks(lg)) > before[-1] + 1,
                                "ticks after the migration"))
    assert after[: len(before)] == before and after == sorted(after), after
    log = console(sb, ns, "linux-a")
    assert log.count(b"fvm-guest: boot ") == 1, log.decode(errors="replace")[-2000:]
    # A guest reboot resets the negotiated features: the agent re-evaluates on libvirt's reboot event
    # (the condition flips while the guest boots) and FailoverReady is True again once it is up.
    before_reset = condition(get_vm(sb, ns, "linux-a"), "FailoverReady")["lastTransitionTime"]
    conn = libvirt_conn(sb, moved["status"]["nodeName"])
    try:
        conn.lookupByName(moved["status"]["domain"]["name"]).reset(0)
    finally:
        conn.close()
    console_until(sb, ns, "linux-a", lambda lg: lg.count(b"fvm-guest: boot ") == 2, "the second boot")

    def renegotiated() -> dict[str, Any] | None:
        c = condition(get_vm(sb, ns, "linux-a"), "FailoverReady")
        return c if c and c["status"] == "True" and c["lastTransitionTime"] != before_reset else None

    wait_for(renegotiated, 60, interval=1, what="FailoverReady re-evaluated after the guest rebooted")
    # linux-b reaches linux-a over the standby L2 before and after the move (node bridges + fabric).
    b_log = console(sb, ns, "linux-b").decode(errors="replace")
    print(f"linux-b peer results: {re.findall(r'peer=(ok|fail)', b_log)[-10:]}")
    last_tick = max(ticks(console(sb, ns, "linux-b")))
    pattern = re.compile(rb"tick n=(\d+) .*peer=ok")
    b_after = console_until(sb, ns, "linux-b",
                            lambda lg: any(int(n) > last_tick for n in pattern.findall(lg)),
                            "linux-b pinging linux-a after the migration", timeout=40, fail=False)
    assert any(int(n) > last_tick for n in pattern.findall(b_after)), b_after.decode(errors="replace")[-2000:]


def test_guest_without_net_failover_is_reported_and_warned(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "guest-nofailover")
    apply(sb, network_pool())
    apply(sb, vm_manifest("halt", ns, POOL))
    node = wait_phase(sb, ns, "halt", "Running")["status"]["nodeName"]
    vm = failover_ready(sb, ns, "halt", "False", timeout=60)
    c = condition(vm, "FailoverReady")
    assert c["reason"] == "GuestDriverNotNegotiated" and "net_failover" in c["message"], c
    warned_before = warned_migrations(sb)
    drain(sb, node)
    moved = wait_phase(sb, ns, "halt", "Running")
    assert moved["status"]["nodeName"] != node
    mig = [m for m in migrations(sb, ns) if m["spec"]["vmName"] == "halt"]
    assert len(mig) == 1 and mig[0]["status"]["phase"] == "Succeeded", [m.get("status") for m in mig]
    st = mig[-1]["status"]
    assert condition(mig[-1], "FailoverReady")["status"] == "False"
    assert any("has not negotiated failover" in w for w in st.get("warnings") or []), st
    wait_for(lambda: events(sb, ns, "FailoverNotNegotiated"), 30,
             what="the Warning event for the unnegotiated migration")
    assert warned_migrations(sb) >= warned_before + 1  # this drain's migration, not an earlier test's


def test_require_failover_ready_refuses_the_migration(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "guest-require")
    apply(sb, network_pool())
    apply(sb, vm_manifest("strict", ns, POOL, requireFailoverReady=True))
    wait_phase(sb, ns, "strict", "Running")
    failover_ready(sb, ns, "strict", "False", timeout=60)
    res = subprocess.run([sys.executable, "-m", "failovervm.cli", "migrate", "strict", "-n", ns,
                          "--kubeconfig", str(sb.kubeconfig)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr

    def failed() -> dict[str, Any] | None:
        ms = migrations(sb, ns)
        return ms[0] if ms and (ms[0].get("status") or {}).get("phase") == "Failed" else None

    mig = wait_for(failed, 60, what="the refused migration")
    assert mig["status"]["reason"] == "FailoverNotReady", mig["status"]
    assert "requireFailoverReady" in mig["status"]["message"]
    vm = get_vm(sb, ns, "strict")
    assert vm["status"]["phase"] == "Running" and not vm["status"].get("migration"), json.dumps(vm["status"])
