"""A spec change to a running VM: RestartRequired says what changes, `failovervm restart` applies it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from lxml import etree

from tests.conftest import REPO, Sandbox, make_namespace, wait_for
from tests.e2e.helpers import apply, condition, get_vm, libvirt_conn, pool_manifest, vm_manifest, wait_phase

pytestmark = pytest.mark.e2e
POOL = "restart-pool"


def _live(sb: Sandbox, node: str, domain: str) -> tuple[etree._Element, int]:
    conn = libvirt_conn(sb, node)
    try:
        dom = conn.lookupByName(domain)
        return etree.fromstring(dom.XMLDesc(0).encode()), dom.ID()
    finally:
        conn.close()


def test_spec_change_reports_restart_required_and_restart_applies_it(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "restart")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("r", ns, POOL))
    vm = wait_phase(sb, ns, "r", "Running")
    node, domain = vm["status"]["nodeName"], vm["status"]["domain"]["name"]
    assert condition(vm, "RestartRequired") is None
    _, first_id = _live(sb, node, domain)
    sb.kubectl("-n", ns, "patch", "fvm", "r", "--type", "merge", "-p", '{"spec": {"memory": "48Mi"}}')
    vm = wait_for(lambda: (v := get_vm(sb, ns, "r")) and (c := condition(v, "RestartRequired"))
                  and c["status"] == "True" and v, 60, what="RestartRequired=True")
    assert "memory 32 MiB -> 48 MiB" in condition(vm, "RestartRequired")["message"]
    assert vm["status"]["phase"] == "Running"
    live, same_id = _live(sb, node, domain)
    assert same_id == first_id and int(live.find("memory").text) == 32 * 1024  # not applied yet
    res = subprocess.run([sys.executable, "-m", "failovervm.cli", "restart", "r", "-n", ns, "--wait",
                          "--kubeconfig", str(sb.kubeconfig)], capture_output=True, text=True, timeout=200,
                         cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    vm = wait_for(lambda: (v := get_vm(sb, ns, "r")) and (c := condition(v, "RestartRequired"))
                  and c["status"] == "False" and v, 60, what="RestartRequired=False")
    assert condition(vm, "RestartRequired")["reason"] == "Applied"
    assert vm["status"]["phase"] == "Running" and vm["status"]["nodeName"] == node
    live, new_id = _live(sb, node, domain)
    assert new_id != first_id and int(live.find("memory").text) == 48 * 1024  # a new QEMU with the new spec
    events = sb.kubectl_json("-n", ns, "get", "events")["items"]
    assert {"RestartRequired", "Restarting"} <= {e["reason"] for e in events if e["involvedObject"]["name"] == "r"}
    # The request is carried out once: a later reconcile (any change to the VM) leaves it alone.
    sb.kubectl("-n", ns, "annotate", "fvm", "r", "example.com/poke=1")
    time.sleep(5)  # a negative check: give the agent's reconcile of that change time to act
    assert _live(sb, node, domain)[1] == new_id
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")
