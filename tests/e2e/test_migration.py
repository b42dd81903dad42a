"""Live migration and node evacuation on the 3-node sandbox (issue #4)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from failovervm_sandbox import procs
from tests.conftest import REPO, Sandbox, make_namespace, restart_operator, stop_controllers, wait_for
from tests.e2e.helpers import (
    Sampler,
    apply,
    claims,
    condition,
    domains_on,
    events,
    get_vm,
    libvirt_conn,
    pool_manifest,
    vm_manifest,
    wait_phase,
    wait_webhook,
)

pytestmark = pytest.mark.e2e
POOL = "mig-pool"


def _ns(sb: Sandbox, name: str) -> str:
    return make_namespace(sb, name)


def _node(i: int) -> str:
    return f"sandbox-node-{i}"


def _cli(sb: Sandbox, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "failovervm.cli", *args, "--kubeconfig", str(sb.kubeconfig)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def _migrations(sb: Sandbox, ns: str) -> list[dict[str, Any]]:
    return list(sb.kubectl_json("-n", ns, "get", "fvmm")["items"])


def _vm_pods(sb: Sandbox, ns: str, role: str | None = None) -> list[dict[str, Any]]:
    """The VM pods of a namespace (docs/capacity.md), of one role if given."""
    selector = "failovervm.io/vm-uid" + (f",failovervm.io/role={role}" if role else "")
    return list(sb.kubectl_json("-n", ns, "get", "pods", "-l", selector)["items"])


def _vm_pods_on(sb: Sandbox, ns: str, node: str) -> list[str]:
    return sorted(p["metadata"]["labels"]["failovervm.io/vm"] for p in _vm_pods(sb, ns)
                  if p["spec"].get("nodeName") == node)


def _place_on(sb: Sandbox, ns: str, node: str, names: list[str], **spec: Any) -> None:
    """Create VMs while every other node carries a (non-evacuating) NoSchedule taint."""
    others = [n["node"] for n in sb.nodes if n["node"] != node]
    for other in others:
        sb.kubectl("taint", "node", other, "fvm-test/hold=yes:NoSchedule", "--overwrite")
    try:
        apply(sb, *(vm_manifest(n, ns, POOL, **spec) for n in names))
        for n in names:
            vm = wait_phase(sb, ns, n, "Running")
            assert vm["status"]["nodeName"] == node
    finally:
        for other in others:
            sb.kubectl("taint", "node", other, "fvm-test/hold-", check=False)


class PhaseRecorder(Sampler):
    """Records every phase each VM shows while a drain runs (polling, as a user would watch)."""

    def __init__(self, sb: Sandbox, ns: str) -> None:
        super().__init__()
        self.sb, self.ns = sb, ns
        self.seen: dict[str, set[str]] = {}

    def sample(self) -> None:
        res = self.sb.kubectl("-n", self.ns, "get", "fvm", "-o", "json", check=False)
        if res.returncode == 0:
            for item in json.loads(res.stdout)["items"]:
                self.seen.setdefault(item["metadata"]["name"], set()).add((item.get("status") or {}).get("phase", ""))


def _max_overlap(migs: list[dict[str, Any]]) -> int:
    points = []
    for m in migs:
        st = m["status"]
        points += [(_ts(st["startTimestamp"]), 1), (_ts(st["endTimestamp"]), -1)]
    cur = best = 0
    for _, d in sorted(points, key=lambda p: (p[0], p[1])):
        cur += d
        best = max(best, cur)
    return best


def test_kubectl_drain_waits_for_live_migration_of_every_vm(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "drain")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]))
    names = [f"d{i}" for i in range(6)]
    _place_on(sb, ns, _node(1), names)
    # Each VM has its pod on node 1, bound there by kube-scheduler: what drain evicts.
    wait_for(lambda: _vm_pods_on(sb, ns, _node(1)) == names, 30, what="the VM pods on node 1")
    uuids = {n: get_vm(sb, ns, n)["status"]["domain"]["uuid"] for n in names}
    pod_names = sorted(p["metadata"]["name"] for p in _vm_pods(sb, ns))
    t0 = time.monotonic()
    with PhaseRecorder(sb, ns) as rec:
        res = sb.kubectl("drain", _node(1), "--ignore-daemonsets", "--timeout=300s", timeout=330, check=False)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    # drain evicted each VM pod through the Eviction API, and the webhook held it (429) while its VM
    # was still there; once the VM had left, the controller had deleted the pod.
    for p in pod_names:
        assert f'evicting pods/"{p}" -n "{ns}" (will retry after 5s)' in res.stderr, (p, res.stderr)
    # drain returned only after all 6 VMs left: nothing is left on node 1, in libvirt or in the API.
    assert domains_on(sb, _node(1)) == []
    for n in names:
        vm = get_vm(sb, ns, n)
        assert vm["status"]["phase"] == "Running" and vm["status"]["nodeName"] != _node(1), vm["status"]
        assert vm["metadata"]["labels"]["failovervm.io/node"] == vm["status"]["nodeName"]
        # Arrived by migration, never rebooted: libvirt's state reason on the target says "migrated".
        conn = libvirt_conn(sb, vm["status"]["nodeName"])
        try:
            dom = conn.lookupByName(vm["status"]["domain"]["name"])
            (state, reason), uuid_there = dom.state(), dom.UUIDString()
        finally:
            conn.close()
        assert state == libvirt.VIR_DOMAIN_RUNNING and reason == libvirt.VIR_DOMAIN_RUNNING_MIGRATED
        assert not {"Stopped", "Starting", "Pending", "Failed"} & rec.seen.get(n, set()), rec.seen.get(n)
        # The same domain (libvirt's UUID, kept by a live migration; a new definition gets a new
        # one), started once, when the VM was created, and moved once.
        assert vm["status"]["domain"]["uuid"] == uuids[n] == uuid_there, (uuids[n], vm["status"]["domain"])
        assert sum(e.get("count") or 1 for e in events(sb, ns, "Started", n)) == 1
        assert not events(sb, ns, "Restarting", n)
        assert len(events(sb, ns, "Migrated", n)) == 1
        assert vm["status"]["vf"]["node"] == vm["status"]["nodeName"]
    # One migration per VM, all succeeded: no second one started by a concurrent node sweep.
    migs = _migrations(sb, ns)
    assert len(migs) == 6 and all(m["status"].get("phase") == "Succeeded" for m in migs), [m["status"] for m in migs]
    assert sorted(m["spec"]["vmName"] for m in migs) == names
    for m in migs:
        assert m["status"]["sourceNode"] == _node(1)
        assert m["status"]["targetNode"] == get_vm(sb, ns, m["spec"]["vmName"])["status"]["nodeName"]
        # Downtime recorded: libvirt's figure for the pause at the switch-over.
        assert isinstance(m["status"]["stats"]["downtimeMs"], int) and m["status"]["stats"]["downtimeMs"] >= 0
    table = sb.kubectl("-n", ns, "get", "fvmm").stdout
    assert "DOWNTIME" in table.splitlines()[0] and table.count("Succeeded") == 6, table
    # The VF claims moved with the VMs, one claim per VM.
    mine = [c for c in claims(sb) if c["spec"]["owner"]["namespace"] == ns]
    assert len(mine) == 6 and all(c["spec"]["node"] != _node(1) for c in mine)
    assert all(c["spec"]["purpose"] == "Running" for c in mine)
    # Never more than 2 outbound migrations from one node at once.
    assert _max_overlap(migs) <= 2
    print(f"drain of 6 VMs took {took:.1f}s; downtimes "
          f"{sorted(m['status']['stats']['downtimeMs'] for m in migs)} ms")
    # The VM pods moved with the VMs: each VM's target pod became its running pod on its new node,
    # none is left on node 1 and no target pod outlived its migration.
    pods = _vm_pods(sb, ns)
    assert not _vm_pods_on(sb, ns, _node(1)) and len(pods) == 6, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        vm = get_vm(sb, ns, pod["metadata"]["labels"]["failovervm.io/vm"])
        assert pod["metadata"]["labels"]["failovervm.io/role"] == "running"
        assert pod["spec"]["nodeName"] == vm["status"]["nodeName"]
    assert not sb.kubectl_json("-n", "failovervm-system", "get", "pods", "-l", "failovervm.io/guard")["items"]
    # Uncordon makes the node schedulable again.
    sb.kubectl("uncordon", _node(1))
    apply(sb, vm_manifest("back", ns, POOL, nodeSelector={"kubernetes.io/hostname": _node(1)}))
    assert wait_phase(sb, ns, "back", "Running")["status"]["nodeName"] == _node(1)
    sb.kubectl("delete", "namespace", ns, "--timeout=180s", timeout=200)


def _evict(sb: Sandbox, ns: str, pod: str) -> subprocess.CompletedProcess[str]:
    """An Eviction API call, as cluster-autoscaler, Karpenter and `kubectl drain` make them."""
    eviction = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}})
    return sb.kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-",
                      input=eviction, check=False)


def _empties_by_eviction(sb: Sandbox, ns: str, node: str, taint: str, names: list[str]) -> None:
    """An autoscaler's scale-down: its taint on the node, then Eviction API calls on the node's pods.
    The VM pods' evictions get 429 while the VMs are there; the VMs live-migrate away; then the VM
    pods on the node are gone (the controller deleted them) and the evictions are done."""
    pods = [p["metadata"]["name"] for p in _vm_pods(sb, ns) if p["spec"].get("nodeName") == node]
    assert len(pods) == len(names), pods
    for name in pods:
        pod = sb.kubectl_json("-n", ns, "get", "pod", name)
        assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "true"
        assert not any(t.get("key") == "karpenter.sh/disrupted" or (t.get("operator") == "Exists" and not t.get("key"))
                       for t in pod["spec"].get("tolerations") or []), pod["spec"].get("tolerations")
    sb.kubectl("taint", "node", node, taint, "--overwrite")
    try:
        # Taint and evictions come back to back, as from the autoscaler: the VMs are still there.
        for name in pods:
            first = _evict(sb, ns, name)
            assert first.returncode != 0, f"{name} was evicted while its VM was still on the node"
            assert "429" in first.stderr or "TooManyRequests" in first.stderr or "still runs" in first.stderr, \
                first.stderr
        for n in names:
            wait_for(lambda n=n: (get_vm(sb, ns, n) or {}).get("status", {}).get("nodeName") not in (None, node)
                     and get_vm(sb, ns, n)["status"]["phase"] == "Running", 120, what=f"{n} migrated off")
        assert domains_on(sb, node) == []
        # Empty now: the VM pods there are gone, so the evictions are done (404 from here on).
        wait_for(lambda: all(_evict(sb, ns, name).returncode != 0 for name in pods)
                 and not _vm_pods_on(sb, ns, node), 60, what="the VM pods on the node gone")
        migs = [m for m in _migrations(sb, ns) if m["spec"]["vmName"] in names]
        assert sorted(m["spec"]["vmName"] for m in migs) == sorted(names), "one live migration per VM"
        assert all(m["status"]["phase"] == "Succeeded" for m in migs)
    finally:
        sb.kubectl("taint", "node", node, f"{taint.split('=')[0].split(':')[0]}-", check=False)


def test_cluster_autoscaler_taint_and_evictions(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "autoscaler")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]))
    _place_on(sb, ns, _node(2), ["ca0", "ca1"], memory="1Gi")
    _empties_by_eviction(sb, ns, _node(2), "ToBeDeletedByClusterAutoscaler=1:NoSchedule", ["ca0", "ca1"])
    sb.kubectl("delete", "namespace", ns, "--timeout=180s", timeout=200)


def _evict_until_done(sb: Sandbox, ns: str, pods: list[str], timeout: float = 120) -> None:
    """Evict `pods` as cluster-autoscaler does: one Eviction API call per pod, retried while the
    answer is 429 (CA gives up after --max-pod-eviction-time, 2 minutes), done once a call succeeds
    or the pod is gone."""
    left = list(pods)
    deadline = time.monotonic() + timeout
    while left:
        assert time.monotonic() < deadline, f"evictions still refused after {timeout}s: {left}"
        for name in list(left):
            res = _evict(sb, ns, name)
            if res.returncode == 0 or "NotFound" in res.stderr or "not found" in res.stderr:
                left.remove(name)
            else:
                assert "429" in res.stderr or "TooManyRequests" in res.stderr or "still runs" in res.stderr, res.stderr
        time.sleep(1)


def test_cluster_autoscaler_scale_down_moves_each_vm_once(operator_sandbox: Sandbox) -> None:
    """cluster-autoscaler scaling 3 nodes down to 1: it first marks its candidates (here node 1 and
    node 2) with the soft taint DeletionCandidateOfClusterAutoscaler (PreferNoSchedule), then removes
    them one at a time: ToBeDeletedByClusterAutoscaler (NoSchedule) and evictions. The VMs leaving
    node 1 must go to node 3, which stays, not to node 2, the next to go (issue #11 saw one VM go
    node 1 -> node 2 -> node 3). kube-scheduler's TaintToleration scoring places the target pods."""
    sb = operator_sandbox
    ns = _ns(sb, "scaledown")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]))
    names = ["sd0", "sd1", "sd2"]
    _place_on(sb, ns, _node(1), names)
    wait_for(lambda: _vm_pods_on(sb, ns, _node(1)) == names, 30, what="the VM pods on node 1")
    pods = sorted(p["metadata"]["name"] for p in _vm_pods(sb, ns))
    stamp = str(int(time.time()))  # CA's taint values are the Unix time it set them
    try:
        for n in (1, 2):
            sb.kubectl("taint", "node", _node(n), f"DeletionCandidateOfClusterAutoscaler={stamp}:PreferNoSchedule",
                       "--overwrite")
        # CA marks its candidates in one loop and deletes in a later one (10 s or more later); a
        # moment is enough for kube-scheduler to see the soft taints.
        time.sleep(1)
        sb.kubectl("taint", "node", _node(1), f"ToBeDeletedByClusterAutoscaler={stamp}:NoSchedule", "--overwrite")
        _evict_until_done(sb, ns, pods)
        assert domains_on(sb, _node(1)) == [] and domains_on(sb, _node(2)) == []
        for n in names:
            vm = get_vm(sb, ns, n)
            assert (vm["status"]["phase"], vm["status"]["nodeName"]) == ("Running", _node(3)), (n, vm["status"])
        # One live migration per VM, node 1 -> node 3: none went through node 2.
        migs = _migrations(sb, ns)
        assert sorted(m["spec"]["vmName"] for m in migs) == names, [m["spec"]["vmName"] for m in migs]
        for m in migs:
            st = m["status"]
            assert (st["phase"], st["sourceNode"], st["targetNode"]) == ("Succeeded", _node(1), _node(3)), st
        assert sorted(p["spec"]["nodeName"] for p in _vm_pods(sb, ns)) == [_node(3)] * 3
    finally:
        sb.kubectl("taint", "node", _node(1), "ToBeDeletedByClusterAutoscaler-", check=False)
        for n in (1, 2):
            sb.kubectl("taint", "node", _node(n), "DeletionCandidateOfClusterAutoscaler-", check=False)
    sb.kubectl("delete", "namespace", ns, "--timeout=180s", timeout=200)


def test_karpenter_taint_and_evictions(operator_sandbox: Sandbox) -> None:
    """Karpenter's disruption (consolidation, drift): its taint, then evictions. Its taint counts as
    a cordon, and VM pods never tolerate it, whatever the VM's tolerations say."""
    sb = operator_sandbox
    ns = _ns(sb, "karpenter")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]))
    _place_on(sb, ns, _node(3), ["k0", "k1"], tolerations=[{"operator": "Exists"}])
    _empties_by_eviction(sb, ns, _node(3), "karpenter.sh/disrupted:NoSchedule", ["k0", "k1"])
    sb.kubectl("delete", "namespace", ns, "--timeout=180s", timeout=200)


def test_vm_pod_contract(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "vmpod")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("g", ns, POOL))
    vm = wait_phase(sb, ns, "g", "Running")
    node = vm["status"]["nodeName"]
    [pod] = wait_for(lambda: _vm_pods(sb, ns) or None, 30, what="the VM pod")
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "true"
    assert pod["spec"]["nodeName"] == node  # kube-scheduler bound it; the VM runs there
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "FailoverVM", "g", vm["metadata"]["uid"], True)
    labels = pod["metadata"]["labels"]
    assert (labels["failovervm.io/vm"], labels["failovervm.io/vm-uid"], labels["failovervm.io/role"]) == (
        "g", vm["metadata"]["uid"], "running")
    c = pod["spec"]["containers"][0]
    # 1 vCPU and 32Mi of guest memory, plus the default per-VM overhead, and one VF of the pool.
    assert c["resources"]["requests"] == {"cpu": "1100m", "memory": "192Mi", f"vf.failovervm.io/{POOL}": "1"}
    assert c["command"] == ["failovervm", "hold"]
    assert c["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    # No kubelet in the sandbox: bound, never running, and nothing waits for it to run.
    assert pod["status"]["phase"] == "Pending"
    assert not sb.kubectl_json("get", "poddisruptionbudgets", "-A")["items"], "no PDBs are used"
    assert not sb.kubectl_json("-n", "failovervm-system", "get", "pods", "-l", "failovervm.io/guard")["items"]
    for n in sb.kubectl_json("get", "nodes")["items"]:
        assert not n["metadata"].get("finalizers"), "the operator must never put finalizers on Nodes"
    # Deleted behind the operator's back: a new pod, bound to the VM's node, and the VM keeps running.
    sb.kubectl("-n", ns, "delete", "pod", pod["metadata"]["name"], "--wait=false")
    again = wait_for(lambda: [p for p in _vm_pods(sb, ns) if p["metadata"]["uid"] != pod["metadata"]["uid"]]
                     or None, 30, what="the VM pod recreated")
    assert [p["spec"]["nodeName"] for p in again] == [node]
    assert events(sb, ns, "VMPodCreated")
    domain = get_vm(sb, ns, "g")["status"]["domain"]["name"]
    conn = libvirt_conn(sb, node)
    try:
        assert conn.lookupByName(domain).isActive()
    finally:
        conn.close()
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_manual_migration_with_and_without_target(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "manual")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("m", ns, POOL))
    src = wait_phase(sb, ns, "m", "Running")["status"]["nodeName"]
    target = next(n["node"] for n in sb.nodes if n["node"] != src)
    res = _cli(sb, "migrate", "m", "-n", ns, "--to", target, "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Succeeded" in res.stdout
    vm = get_vm(sb, ns, "m")
    assert vm["status"]["nodeName"] == target and f"fvm_{ns}_m" not in domains_on(sb, src)
    res = _cli(sb, "migrate", "m", "-n", ns, "--wait", "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    mig = json.loads(res.stdout)
    assert mig["status"]["phase"] == "Succeeded" and mig["status"]["sourceNode"] == target
    assert mig["status"]["targetNode"] != target
    assert get_vm(sb, ns, "m")["status"]["nodeName"] == mig["status"]["targetNode"]
    out = sb.kubectl("-n", ns, "get", "fvmm").stdout
    assert "Succeeded" in out and "DOWNTIME" in out
    # History: the migrations of a deleted VM are collected by the controller's 30 s sweep.
    sb.kubectl("-n", ns, "delete", "fvm", "m", "--timeout=120s", timeout=130)
    wait_for(lambda: not sb.kubectl_json("-n", ns, "get", "fvmm")["items"], 75, interval=1,
             what="the deleted VM's migrations to be collected")
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def _slow_migration(sb: Sandbox, ns: str, vm: str, target: str) -> str:
    """A migration of a 4 GiB guest limited to 1 MiB/s: several seconds in phase Running. Returns
    once memory is being copied (the Progress condition), so the test acts mid-transfer rather than
    while the target is still launching QEMU (phase Running is written before libvirt is called)."""
    body = {"apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVMMigration",
            "metadata": {"name": f"{vm}-slow", "namespace": ns},
            "spec": {"vmName": vm, "targetNode": target, "bandwidthMiBps": 1}}
    sb.kubectl("apply", "-f", "-", input=json.dumps(body))
    last: dict[str, Any] = {}

    def copying() -> bool:
        last.update(sb.kubectl_json("-n", ns, "get", "fvmm", f"{vm}-slow").get("status") or {})
        progress = next((c for c in last.get("conditions") or [] if c["type"] == "Progress"), None)
        return last.get("phase") == "Running" and progress is not None

    if not wait_for(copying, 60, interval=0.2, what="migration copying memory", fail=False):
        vm_status = (get_vm(sb, ns, vm) or {}).get("status")
        pytest.fail(f"migration never ran: {last}; VM status {vm_status}", pytrace=False)
    return f"{vm}-slow"


def _copy_on(sb: Sandbox, ns: str, vm: str, node: str, paused: bool) -> None:
    """Start a copy of the VM's domain on another node, as a migration that died with the target's
    libvirtd leaves it (a transient domain; paused like an incoming guest, or running).

    The node's agent is frozen meanwhile, as if it were away: it removes a copy that is still
    starting up (QEMU paused, no guest code run yet), which would cut this createXML short."""
    src = get_vm(sb, ns, vm)["status"]["nodeName"]
    conn = libvirt_conn(sb, src)
    try:
        xml = conn.lookupByName(f"fvm_{ns}_{vm}").XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    finally:
        conn.close()
    agent = sb.data[f"agent-{next(n['index'] for n in sb.nodes if n['node'] == node)}"]["pid"]
    os.kill(agent, signal.SIGSTOP)
    try:
        conn = libvirt_conn(sb, node)
        try:
            conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
        finally:
            conn.close()
    finally:
        os.kill(agent, signal.SIGCONT)


def test_leftover_copy_on_another_node_is_removed_and_a_running_one_reported(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "leftover")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("lv", ns, POOL))
    src = wait_phase(sb, ns, "lv", "Running")["status"]["nodeName"]
    other = next(n["node"] for n in sb.nodes if n["node"] != src)
    dname = f"fvm_{ns}_lv"
    # A paused copy (the remains of an incoming migration): the other node's agent removes it.
    _copy_on(sb, ns, "lv", other, paused=True)
    wait_for(lambda: dname not in domains_on(sb, other), 45, what="the leftover copy removed")
    assert events(sb, ns, "StaleDomainRemoved")
    assert domains_on(sb, src).count(dname) == 1 and get_vm(sb, ns, "lv")["status"]["phase"] == "Running"
    # A running copy is never killed by the operator: it is reported, and a migration there refused.
    _copy_on(sb, ns, "lv", other, paused=False)
    try:
        wait_for(lambda: events(sb, ns, "DuplicateDomain"), 45, what="the DuplicateDomain event")
        assert dname in domains_on(sb, other)
        res = _cli(sb, "migrate", "lv", "-n", ns, "--to", other, "--wait")
        assert res.returncode != 0 and "already exists on" in res.stdout + res.stderr, res.stdout + res.stderr
        assert get_vm(sb, ns, "lv")["status"]["nodeName"] == src
    finally:
        conn = libvirt_conn(sb, other)
        try:
            conn.lookupByName(dname).destroy()
        except libvirt.libvirtError:
            pass
        conn.close()
    # With the copy gone, the migration there works, and one copy runs.
    res = _cli(sb, "migrate", "lv", "-n", ns, "--to", other, "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [n["node"] for n in sb.nodes if dname in domains_on(sb, n["node"])] == [other]


@contextlib.contextmanager
def _controller_with(sb: Sandbox, *extra: str) -> Iterator[None]:
    """Run the sandbox's controller with extra flags for a while; `sandbox up` restarts the usual one."""
    old = sb.data["controller"]["pid"]
    argv = procs.cmdline(old)
    assert argv, "the sandbox's controller is not running"
    stop_controllers(sb)  # the standby too: it would stay the active one
    pid = procs.spawn([*argv, *extra], sb.state_dir / "logs" / "controller-flags.log")
    try:
        port = sb.data["operator"]["webhook_port"]
        wait_webhook(port)
        yield
    finally:
        procs.stop(pid, "controller")
        restart_operator(sb)


def test_a_migration_its_source_agent_does_not_take_releases_the_target(operator_sandbox: Sandbox) -> None:
    """A drain of a node whose agent is hung (NotReady but not fenced) must not hold a VF per VM
    on the other nodes: an untaken TargetReady fails after the handover timeout. The woken agent
    then never starts the released migration, and the next one works."""
    sb = operator_sandbox
    ns = _ns(sb, "handover")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("hv", ns, POOL))
    src = wait_phase(sb, ns, "hv", "Running")["status"]["nodeName"]
    src_entry = next(n for n in sb.nodes if n["node"] == src)
    target = next(n["node"] for n in sb.nodes if n["node"] != src)
    agent = sb.data[f"agent-{src_entry['index']}"]["pid"]
    body = {"apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVMMigration",
            "metadata": {"name": "hv-stuck", "namespace": ns}, "spec": {"vmName": "hv", "targetNode": target}}
    with _controller_with(sb, "--migration-handover-timeout", "8"):
        os.kill(agent, signal.SIGSTOP)
        try:
            sb.kubectl("apply", "-f", "-", input=json.dumps(body))
            wait_for(lambda: any(c["spec"]["node"] == target for c in claims(sb)
                                 if c["spec"]["owner"]["namespace"] == ns), 30, what="the target VF reserved")
            mig = wait_for(lambda: (m := sb.kubectl_json("-n", ns, "get", "fvmm", "hv-stuck"))["status"]["phase"]
                           == "Failed" and m, 60, what="the untaken migration failed")
            assert mig["status"]["reason"] == "SourceAgentUnresponsive", mig["status"]
            assert f"keeps running on {src}" in mig["status"]["message"]
            wait_for(lambda: [c["spec"]["node"] for c in claims(sb) if c["spec"]["owner"]["namespace"] == ns]
                     == [src], 30, what="the target's VF released")
            vm = get_vm(sb, ns, "hv")
            assert vm["status"]["nodeName"] == src and "migration" not in vm["status"]
            assert events(sb, ns, "SourceAgentUnresponsive")
        finally:
            os.kill(agent, signal.SIGCONT)
    # The woken agent may still see the stale TargetReady in its watch backlog: it must not act on it.
    time.sleep(3)  # a negative check: give it time to work through that backlog
    assert (condition(get_vm(sb, ns, "hv"), "Ready") or {}).get("status") == "True"
    assert [n["node"] for n in sb.nodes if f"fvm_{ns}_hv" in domains_on(sb, n["node"])] == [src]
    res = _cli(sb, "migrate", "hv", "-n", ns, "--to", target, "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [n["node"] for n in sb.nodes if f"fvm_{ns}_hv" in domains_on(sb, n["node"])] == [target]


def test_deleting_a_running_migration_aborts_it(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "abort")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("big", ns, POOL, memory="4Gi"))
    src = wait_phase(sb, ns, "big", "Running")["status"]["nodeName"]
    target = next(n["node"] for n in sb.nodes if n["node"] != src)
    name = _slow_migration(sb, ns, "big", target)
    sb.kubectl("-n", ns, "delete", "fvmm", name, "--timeout=60s")
    vm = wait_phase(sb, ns, "big", "Running")
    assert vm["status"]["nodeName"] == src and "migration" not in vm["status"]
    assert f"fvm_{ns}_big" in domains_on(sb, src)
    wait_for(lambda: f"fvm_{ns}_big" not in domains_on(sb, target), 30, what="no domain left on the target")
    conn = libvirt_conn(sb, src)
    assert conn.lookupByName(f"fvm_{ns}_big").isActive()
    conn.close()
    wait_for(lambda: [c["spec"]["node"] for c in claims(sb) if c["spec"]["owner"]["namespace"] == ns] == [src], 30,
             what="target reservation released")
    events = sb.kubectl_json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=big")
    assert any(e["reason"] == "MigrationAborted" for e in events["items"])
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_target_libvirtd_dies_mid_migration(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "targetdies")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("victim", ns, POOL, memory="4Gi"))
    src = wait_phase(sb, ns, "victim", "Running")["status"]["nodeName"]
    target_entry = next(n for n in sb.nodes if n["node"] != src)
    target = target_entry["node"]
    name = _slow_migration(sb, ns, "victim", target)
    subprocess.run(["kill", "-9", str(sb.data[f"libvirt-{target_entry['index']}"]["pid"])], check=True)
    try:
        mig = wait_for(lambda: (m := sb.kubectl_json("-n", ns, "get", "fvmm", name))["status"]["phase"] == "Failed"
                       and m, 120, what="migration Failed")
        assert mig["status"]["reason"] == "MigrationFailed" and "keeps running on" in mig["status"]["message"]
        vm = wait_phase(sb, ns, "victim", "Running")
        assert vm["status"]["nodeName"] == src
        conn = libvirt_conn(sb, src)
        assert conn.lookupByName(f"fvm_{ns}_victim").isActive()
        conn.close()
        wait_for(lambda: [c["spec"]["node"] for c in claims(sb) if c["spec"]["owner"]["namespace"] == ns] == [src],
                 60, what="target reservation released")
    finally:
        restart_operator(sb)  # brings the target's libvirtd back
    # With the target back, the VM can be migrated there, and only one copy of it ever runs.
    res = _cli(sb, "migrate", "victim", "-n", ns, "--to", target, "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    running = [n["node"] for n in sb.nodes if f"fvm_{ns}_victim" in domains_on(sb, n["node"])]
    assert running == [target]
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")


def test_no_target_with_a_free_vf_keeps_drain_waiting(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "novf")
    # Pool "tight" only has sbxpf1 on nodes 2 and 3; fill node 2's four VFs, put one VM on node 3.
    for n in (2, 3):
        sb.kubectl("label", "node", _node(n), "fvm-test/tight=yes", "--overwrite")
    apply(sb, pool_manifest("tight", sb.data["bridge"], {"fvm-test/tight": "yes"}, pfs=("sbxpf1",)))
    wait_for(lambda: ((sb.kubectl_json("get", "vfpool", "tight").get("status") or {}).get("totals") or {})
             .get("total") == 8, 60, what="tight inventory")
    fillers = [vm_manifest(f"f{i}", ns, "tight", nodeSelector={"kubernetes.io/hostname": _node(2)}) for i in range(4)]
    apply(sb, *fillers, vm_manifest("x", ns, "tight", nodeSelector={"fvm-test/tight": "yes"},
                                    tolerations=[]))
    for i in range(4):
        wait_phase(sb, ns, f"f{i}", "Running")
    x = wait_phase(sb, ns, "x", "Running")
    if x["status"]["nodeName"] != _node(3):
        pytest.fail(f"x landed on {x['status']['nodeName']}, expected {_node(3)}")
    claim_before = x["status"]["vf"]["claimName"]
    try:
        res = sb.kubectl("drain", _node(3), "--ignore-daemonsets", "--timeout=15s", check=False, timeout=60)
        assert res.returncode != 0, "drain must keep waiting while a VM cannot leave"
        # 60 s: should the evacuation's migration vanish (CI once saw none), the 30 s sweep releases
        # the VM's stale lock and the next node sweep starts a new one; the drain must still show it.
        # kube-scheduler cannot bind the target pod: node 2's VFs are all held by the fillers' pods.
        mig = wait_for(lambda: next((m for m in _migrations(sb, ns) if m["spec"]["vmName"] == "x"
                                     and (m.get("status") or {}).get("reason") == "Unschedulable"), None), 60,
                       what="migration waiting with reason Unschedulable", fail=False)
        if not mig:
            # Everything that explains a missing evacuation (CI once saw none at all).
            node3 = sb.kubectl_json("get", "node", _node(3))
            seen = [(e["reason"], e["message"]) for e in sb.kubectl_json("-n", ns, "get", "events")["items"]]
            pytest.fail(f"no Unschedulable migration: {[m.get('status') for m in _migrations(sb, ns)]}; "
                        f"x.status.migration={(get_vm(sb, ns, 'x').get('status') or {}).get('migration')}; "
                        f"node spec={node3.get('spec')}; events={seen}", pytrace=False)
        assert mig["status"]["phase"] == "Scheduling", mig["status"]
        assert "Insufficient vf.failovervm.io/tight" in mig["status"]["message"], mig["status"]
        [target] = _vm_pods(sb, ns, "target")
        cond = next(c for c in target["status"]["conditions"] if c["type"] == "PodScheduled")
        assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")  # what an autoscaler scales up for
        vm = get_vm(sb, ns, "x")
        assert vm["status"]["nodeName"] == _node(3) and vm["status"]["phase"] == "Running"
        assert vm["status"]["vf"]["claimName"] == claim_before
        assert any(c["metadata"]["name"] == claim_before for c in claims(sb))
        assert f"fvm_{ns}_x" in domains_on(sb, _node(3))
        sb.kubectl("uncordon", _node(3))
        # Uncordoned: the waiting evacuation migration is dropped, nothing moved.
        wait_for(lambda: not [m for m in _migrations(sb, ns)
                              if (m.get("status") or {}).get("phase") == "Scheduling"],
                 30, what="evacuation migration dropped")
    finally:
        sb.kubectl("uncordon", _node(3))
        sb.kubectl("delete", "namespace", ns, "--timeout=180s", timeout=200)
        for n in (2, 3):
            sb.kubectl("label", "node", _node(n), "fvm-test/tight-")


def test_shutdown_strategy_restarts_the_vm_elsewhere(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = _ns(sb, "shutdown")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]))
    _place_on(sb, ns, _node(3), ["s"], evictionStrategy="Shutdown")
    first = get_vm(sb, ns, "s")
    sb.kubectl("cordon", _node(3))
    try:
        vm = wait_for(lambda: (v := get_vm(sb, ns, "s")) and (v.get("status") or {}).get("phase") == "Running"
                      and v["status"].get("nodeName") not in (None, _node(3)) and v, 120,
                      what="VM started on another node")
        assert f"fvm_{ns}_s" not in domains_on(sb, _node(3))
        # Started fresh (not migrated): libvirt's state reason is "booted", and no migration object exists.
        conn = libvirt_conn(sb, vm["status"]["nodeName"])
        try:
            _, reason = conn.lookupByName(f"fvm_{ns}_s").state()
        finally:
            conn.close()
        assert reason == libvirt.VIR_DOMAIN_RUNNING_BOOTED
        assert not _migrations(sb, ns)
        assert vm["status"]["vf"]["claimName"] != first["status"]["vf"]["claimName"]
        events = sb.kubectl_json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=s")
        assert {"Evicting", "Evicted"} <= {e["reason"] for e in events["items"]}
        wait_for(lambda: len([c for c in claims(sb) if c["spec"]["owner"]["namespace"] == ns]) == 1, 60,
                 what="old claim released")
    finally:
        sb.kubectl("uncordon", _node(3))
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")
