"""FailoverVM lifecycle on the sandbox, driven with kubectl as a user would (issue #3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import libvirt
import pytest
from lxml import etree

from failovervm_sandbox import procs
from tests.conftest import REPO, Sandbox, make_namespace, restart_operator, wait_for
from tests.e2e.helpers import (
    apply,
    claims,
    condition,
    domains_on,
    get_vm,
    libvirt_conn,
    pool_manifest,
    qemu_cmdline,
    vm_manifest,
    wait_phase,
)

pytestmark = pytest.mark.e2e


def _ns(sb: Sandbox, name: str) -> str:
    return make_namespace(sb, name)


def test_example_vm_runs_with_a_failover_pair(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    # The example pool, on the test sandbox's bridge.
    apply(sb, pool_manifest("sandbox-pool", sb.data["bridge"]))
    sb.kubectl("apply", "-f", str(REPO / "examples" / "failovervm.yaml"))
    vm = wait_phase(sb, "default", "demo", "Running")
    st = vm["status"]
    node, dom_name, mac = st["nodeName"], st["domain"]["name"], st["mac"]
    assert dom_name == "fvm_default_demo"
    assert condition(vm, "Ready")["status"] == "True"
    assert condition(vm, "Scheduled")["status"] == "True"
    assert vm["metadata"]["labels"]["failovervm.io/node"] == node
    # QEMU runs virtio-net-pci with failover on.
    cmd = qemu_cmdline(sb, node, dom_name)
    assert '"driver":"virtio-net-pci"' in cmd and '"failover":true' in cmd, cmd
    # Live XML: the virtio standby is the persistent teaming member, with the VM's MAC.
    conn = libvirt_conn(sb, node)
    try:
        dom = conn.lookupByName(dom_name)
        live = etree.fromstring(dom.XMLDesc(0).encode())
        standby = live.find("devices/interface[@type='bridge']")
        assert standby.find("teaming").get("type") == "persistent"
        assert standby.find("mac").get("address") == mac
        assert standby.find("alias").get("name") == "ua-fvm-standby"
        assert standby.find("rom").get("enabled") == "no"
    finally:
        conn.close()
    # The VF: claimed, shown in kubectl get, and honestly reported as not attached (simulated VFs).
    assert st["vf"]["node"] == node and st["vf"]["pciAddress"]
    out = sb.kubectl("get", "fvm", "demo", "-n", "default").stdout
    assert node in out and st["vf"]["pciAddress"] in out and "Running" in out
    vf_cond = wait_for(lambda: (c := condition(get_vm(sb, "default", "demo"), "VFAttached")) and c, 30,
                       what="VFAttached condition")
    assert vf_cond["status"] == "False"
    assert "simulated" in vf_cond["message"]
    assert "host doesn't support passthrough of host PCI devices" in vf_cond["message"]
    claim = [c for c in claims(sb) if c["spec"]["owner"]["name"] == "demo"]
    assert len(claim) == 1 and claim[0]["spec"]["pciAddress"] == st["vf"]["pciAddress"]
    # Events tell the story.
    events = sb.kubectl_json("get", "events", "-n", "default", "--field-selector", "involvedObject.name=demo")
    reasons = {e["reason"] for e in events["items"]}
    assert {"Scheduled", "Started"} <= reasons
    # kubectl delete removes the domain and the claim.
    sb.kubectl("delete", "-f", str(REPO / "examples" / "failovervm.yaml"), "--timeout=60s")
    assert dom_name not in domains_on(sb, node)
    assert not [c for c in claims(sb) if c["spec"]["owner"]["name"] == "demo"]


def test_invalid_specs_are_rejected_at_apply_time(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "admission")
    apply(sb, pool_manifest("sandbox-pool", sb.data["bridge"]))
    cases = {
        "spec.network.mac": vm_manifest("bad-mac", ns, "sandbox-pool", network={"pool": "sandbox-pool",
                                                                                  "mac": "01:00:5e:00:00:01"}),
        "spec.cpu": vm_manifest("bad-cpu", ns, "sandbox-pool", cpu=0),
        "spec.memory": vm_manifest("bad-mem", ns, "sandbox-pool", memory="1Mi"),
        "spec.network.pool": vm_manifest("bad-pool", ns, "no-such-pool"),
        "spec.disks[boot].path": vm_manifest(
            "bad-path", ns, "sandbox-pool", disks=[{"name": "boot", "path": "/etc/shadow", "readOnly": True}]),
        "spec.disks[0].path": vm_manifest(
            "dotdot", ns, "sandbox-pool",
            disks=[{"name": "boot", "path": "/var/lib/failovervm-sandbox/images/../../../etc/shadow"}]),
        "metadata.name": vm_manifest("x" * 70, ns, "sandbox-pool"),
    }
    for field, manifest in cases.items():
        res = sb.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
        assert res.returncode != 0, f"{field} was accepted"
        assert field in res.stderr, (field, res.stderr)
    # A duplicate MAC is refused by the webhook.
    apply(sb, vm_manifest("mac-a", ns, "sandbox-pool", running=False,
                          network={"pool": "sandbox-pool", "mac": "02:aa:bb:cc:dd:01"}))
    res = sb.kubectl("apply", "-f", "-", check=False, input=json.dumps(
        vm_manifest("mac-b", ns, "sandbox-pool", running=False,
                    network={"pool": "sandbox-pool", "mac": "02:AA:BB:CC:DD:01"})))
    assert res.returncode != 0 and "spec.network.mac" in res.stderr and "mac-a" in res.stderr
    sb.kubectl("delete", "namespace", ns, "--timeout=90s")


def test_capacity_pending_until_vfs_free_up(operator_sandbox: Sandbox) -> None:
    """Pools of 4 VFs on each of 2 nodes: 10 VMs give 8 Running and 2 Pending (kube-scheduler finds
    no node with a free vf.failovervm.io/cap-pool, which the VM pods request)."""
    sb = operator_sandbox
    ns = _ns(sb, "capacity")
    nodes = [n["node"] for n in sb.nodes[:2]]
    for node in nodes:
        sb.kubectl("label", "node", node, "fvm-test/capacity=yes", "--overwrite")
    assert not [c for c in claims(sb) if c["spec"]["node"] in nodes and c["spec"]["pf"] == "sbxpf0"], \
        "leftover claims from another test"
    apply(sb, pool_manifest("cap-pool", sb.data["bridge"], {"fvm-test/capacity": "yes"}, pfs=("sbxpf0",)))
    wait_for(lambda: (sb.kubectl_json("get", "vfpool", "cap-pool").get("status") or {}).get("totals", {})
             .get("total") == 8, 60, what="cap-pool inventory of 8 VFs")
    apply(sb, *(vm_manifest(f"vm{i}", ns, "cap-pool") for i in range(10)))

    def phases() -> dict[str, str]:
        items = sb.kubectl_json("-n", ns, "get", "fvm")["items"]
        return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}

    wait_for(lambda: sorted(phases().values()) == ["Pending"] * 2 + ["Running"] * 8, 180,
             what="8 Running + 2 Pending")
    pending = sorted(n for n, p in phases().items() if p == "Pending")
    for name in pending:
        cond = wait_for(lambda name=name: (c := condition(get_vm(sb, ns, name), "Scheduled"))
                        and c["reason"] == "Unschedulable" and c, 30, what=f"{name} Unschedulable")
        assert cond["status"] == "False", cond
        assert "Insufficient vf.failovervm.io/cap-pool" in cond["message"], cond  # kube-scheduler's own words
        [pod] = sb.kubectl_json("-n", ns, "get", "pods", "-l", f"failovervm.io/vm={name}")["items"]
        assert not pod["spec"].get("nodeName")
        assert any(c["type"] == "PodScheduled" and c["reason"] == "Unschedulable" for c in pod["status"]["conditions"])
    # Exactly one claim per running VM, never two on one VF.
    cap_claims = [c for c in claims(sb) if c["spec"]["owner"]["namespace"] == ns]
    assert len(cap_claims) == 8
    assert len({(c["spec"]["node"], c["spec"]["pciAddress"]) for c in cap_claims}) == 8
    pool = sb.kubectl_json("get", "vfpool", "cap-pool")
    wait_for(lambda: sb.kubectl_json("get", "vfpool", "cap-pool")["status"]["totals"]["free"] == 0, 30,
             what="pool status free=0")
    # Each node's VFs are in its own VFInventory (issue #12); the pool keeps totals and conditions.
    assert "nodes" not in pool["status"]
    inventory = sb.kubectl_json("get", "vfinventory", nodes[0])
    assert inventory["spec"]["nodeName"] == nodes[0]
    assert inventory["metadata"]["ownerReferences"][0]["kind"] == "Node"
    assert next(p for p in inventory["spec"]["pools"] if p["name"] == "cap-pool")["simulated"] is True
    # Freeing two VFs lets both pending VMs start.
    running = sorted(n for n, p in phases().items() if p == "Running")[:2]
    sb.kubectl("-n", ns, "delete", "fvm", *running, "--timeout=60s")
    for name in pending:
        wait_phase(sb, ns, name, "Running", timeout=90)
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")
    for node in nodes:
        sb.kubectl("label", "node", node, "fvm-test/capacity-")
    wait_for(lambda: not [c for c in claims(sb) if c["spec"]["owner"]["namespace"] == ns], 60,
             what="claims released")


def test_guest_shutdown_behind_the_operators_back_is_followed_and_restarted(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "lifecycle")
    apply(sb, pool_manifest("sandbox-pool", sb.data["bridge"]), vm_manifest("guest", ns, "sandbox-pool"))
    vm = wait_phase(sb, ns, "guest", "Running")
    node, dom_name = vm["status"]["nodeName"], vm["status"]["domain"]["name"]
    conn = libvirt_conn(sb, node)
    try:
        dom = conn.lookupByName(dom_name)
        first_id = dom.ID()
        # The guest powers off (QEMU exits as on a guest-initiated shutdown: SIGTERM -> SHUTDOWN event).
        subprocess.run(["virsh", "-c", conn.getURI(), "destroy", "--graceful", dom_name], check=True,
                       capture_output=True)
        # With running: true the agent starts it again, prompted by the lifecycle event.
        # (virDomain.ID() is cached client-side: look the domain up again each time.)
        wait_for(lambda: (d := conn.lookupByName(dom_name)).isActive() and d.ID() != first_id, 30,
                 what="domain restarted")
        wait_phase(sb, ns, "guest", "Running", timeout=30)
        events = sb.kubectl_json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=guest")
        assert sum(1 for e in events["items"] if e["reason"] == "Started") >= 1
        # spec.running=false stops it and status follows.
        sb.kubectl("-n", ns, "patch", "fvm", "guest", "--type=merge", "-p", '{"spec":{"running":false}}')
        wait_phase(sb, ns, "guest", "Stopped", timeout=60)
        assert not dom.isActive()
        sb.kubectl("-n", ns, "patch", "fvm", "guest", "--type=merge", "-p", '{"spec":{"running":true}}')
        wait_phase(sb, ns, "guest", "Running", timeout=60)
    finally:
        conn.close()
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_agent_kill_9_and_restart_adopts_domains(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "adopt")
    apply(sb, pool_manifest("sandbox-pool", sb.data["bridge"]),
          *(vm_manifest(f"a{i}", ns, "sandbox-pool") for i in range(3)))
    vms = [wait_phase(sb, ns, f"a{i}", "Running") for i in range(3)]
    before = {}
    for vm in vms:
        node = vm["status"]["nodeName"]
        conn = libvirt_conn(sb, node)
        before[vm["metadata"]["name"]] = (node, conn.lookupByName(vm["status"]["domain"]["name"]).ID())
        conn.close()
    # A foreign domain the operator did not create must survive everything.
    node1 = sb.nodes[0]
    foreign = libvirt.open(node1["uri"])
    foreign_xml = ("<domain type='qemu'><name>not-ours</name><memory unit='MiB'>16</memory><vcpu>1</vcpu>"
                   "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>")
    foreign.defineXML(foreign_xml)
    agents = {n["node"]: sb.data[f"agent-{n['index']}"]["pid"] for n in sb.nodes}
    for pid in agents.values():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(procs.alive(p) for p in agents.values()), 10, what="agents dead")
    restart_operator(sb)
    new_agents = {n["node"]: sb.data[f"agent-{n['index']}"]["pid"] for n in sb.nodes}
    assert set(new_agents.values()).isdisjoint(agents.values())
    # Give the agents a resync; nothing is restarted, duplicated or lost.
    wait_for(lambda: all(condition(get_vm(sb, ns, f"a{i}"), "Ready")["status"] == "True" for i in range(3)), 60,
             what="VMs ready after agent restart")
    for name, (node, dom_id) in before.items():
        doms = domains_on(sb, node)
        assert doms.count(f"fvm_{ns}_{name}") == 1
        conn = libvirt_conn(sb, node)
        assert conn.lookupByName(f"fvm_{ns}_{name}").ID() == dom_id, "domain was restarted"
        conn.close()
        for other in sb.nodes:
            if other["node"] != node:
                assert f"fvm_{ns}_{name}" not in domains_on(sb, other["node"])
    assert "not-ours" in domains_on(sb, node1["node"])
    foreign.lookupByName("not-ours").undefine()
    foreign.close()
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")
