"""A node's machine fails: its VMs are marked, and restarted elsewhere only once it is fenced."""

from __future__ import annotations

import pytest

from failovervm.nodehealth import CONDITION, OUT_OF_SERVICE_TAINT
from tests.conftest import Sandbox, _cli, make_namespace, wait_for
from tests.e2e.helpers import (
    apply,
    claims,
    condition,
    domains_on,
    events,
    get_vm,
    pool_manifest,
    vm_manifest,
    wait_phase,
)

pytestmark = pytest.mark.e2e
POOL = "nodefail-pool"


def _ready(sb: Sandbox, node: str) -> bool:
    conds = sb.kubectl_json("get", "node", node)["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def test_failed_node_marks_its_vm_and_fencing_restarts_it_elsewhere(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "nodefail")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("crash", ns, POOL))
    vm = wait_phase(sb, ns, "crash", "Running")
    node = vm["status"]["nodeName"]
    state = ["--state-dir", str(sb.state_dir)]
    res = _cli("sandbox", "node-down", *state, node)
    assert res.returncode == 0, res.stderr
    try:
        # Unready but not fenced: the VM may still run there, so it is only marked.
        marked = wait_for(lambda: (v := get_vm(sb, ns, "crash")) and (c := condition(v, CONDITION))
                          and c["status"] == "False" and v, 60, what="NodeHealthy=False")
        assert marked["status"]["nodeName"] == node and marked["status"]["phase"] == "Running"
        # Its pod stays on the unready node (VM pods tolerate not-ready and unreachable): the VM may
        # still run there.
        assert [p["spec"].get("nodeName") for p in sb.kubectl_json(
            "-n", ns, "get", "pods", "-l", "failovervm.io/vm=crash")["items"]] == [node]
        assert "out-of-service" in condition(marked, CONDITION)["message"]
        assert condition(marked, "Ready")["status"] == "Unknown"  # nobody can vouch for it now
        header, row = sb.kubectl("-n", ns, "get", "fvm", "crash").stdout.splitlines()[:2]
        assert row[header.index("READY"):].split()[0] == "Unknown", (header, row)
        wait_for(lambda: events(sb, ns, "NodeNotReady", "crash"), 30, what="the NodeNotReady event")
        # The administrator confirms the machine is off (Kubernetes' non-graceful node shutdown).
        sb.kubectl("taint", "node", node, f"{OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute")
        moved = wait_for(lambda: (v := get_vm(sb, ns, "crash")) and v["status"].get("phase") == "Running"
                         and v["status"].get("nodeName") not in (None, node) and v, 120,
                         what="the VM running on another node")
        new = moved["status"]["nodeName"]
        assert moved["status"]["vf"]["node"] == new
        assert moved["metadata"]["labels"]["failovervm.io/node"] == new
        assert condition(moved, CONDITION) is None  # it was about the old node
        assert f"fvm_{ns}_crash" in domains_on(sb, new)
        fenced = wait_for(lambda: events(sb, ns, "NodeFenced", "crash"), 30, what="the NodeFenced event")
        # The evidence the release rests on is named: the taint as the administrator set it.
        assert f"{OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute" in fenced[0]["message"], fenced[0]["message"]
        # The old node's VF went back to its pool: one claim, on the new node.
        wait_for(lambda: [c["spec"]["node"] for c in claims(sb) if c["spec"]["owner"]["name"] == "crash"] == [new],
                 60, what="the fenced node's VF claim released")
        # The VM's pod went with it: none is left on the fenced node (so a drain of the dead node
        # completes), and its pod is on the new node.
        wait_for(lambda: [p["spec"].get("nodeName") for p in sb.kubectl_json(
            "-n", ns, "get", "pods", "-l", "failovervm.io/vm=crash")["items"]] == [new], 60,
            what="the VM's pod only on the new node")
    finally:
        res = _cli("sandbox", "node-up", *state, node)
        sb.kubectl("taint", "node", node, f"{OUT_OF_SERVICE_TAINT}-", check=False)
        sb.data = sb.__class__(sb.state_dir).data
    assert res.returncode == 0, res.stderr
    # The machine is back: the domain definition it kept is removed by its agent, and only one
    # copy of the VM exists, on the new node.
    wait_for(lambda: f"fvm_{ns}_crash" not in domains_on(sb, node), 90, what="the stale definition removed")
    assert get_vm(sb, ns, "crash")["status"]["nodeName"] == new
    wait_for(lambda: _ready(sb, node), 60, what="the node Ready again")
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")
