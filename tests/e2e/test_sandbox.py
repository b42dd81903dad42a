"""The sandbox cluster does what the operator will need (issue #2)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree
from lxml.builder import E

from failovervm_sandbox import procs
from tests.conftest import REPO, Sandbox, extra_sandbox_network, remove_domain, wait_for
from tests.e2e.helpers import events

pytestmark = pytest.mark.e2e


def test_apiserver_answers_with_pinned_version(sandbox: Sandbox) -> None:
    version = sandbox.kubectl_json("version")
    assert version["serverVersion"]["gitVersion"] == sandbox.data["versions"]["KUBERNETES_VERSION"]


def test_rbac_is_enforced_for_a_serviceaccount_without_permissions(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.kubectl("create", "namespace", "rbac-probe")
    sandbox.kubectl("-n", "rbac-probe", "create", "serviceaccount", "nobody")
    token = sandbox.kubectl("-n", "rbac-probe", "create", "token", "nobody").stdout.strip()
    kc = sandbox.token_kubeconfig(token, tmp_path / "nobody.kubeconfig")
    res = sandbox.kubectl_as(kc, "-n", "rbac-probe", "get", "pods")
    assert res.returncode != 0
    assert "forbidden" in res.stderr.lower()
    # ... and the same token is authenticated: it becomes allowed once RBAC grants it.
    sandbox.kubectl("-n", "rbac-probe", "create", "role", "pod-reader", "--verb=list", "--resource=pods")
    sandbox.kubectl("-n", "rbac-probe", "create", "rolebinding", "pod-reader", "--role=pod-reader",
                    "--serviceaccount=rbac-probe:nobody")
    deadline = time.monotonic() + 10
    while True:
        res = sandbox.kubectl_as(kc, "-n", "rbac-probe", "get", "pods")
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert res.returncode == 0, res.stderr
    assert sandbox.kubectl_as(kc, "-n", "rbac-probe", "get", "secrets").returncode != 0
    sandbox.kubectl("delete", "namespace", "rbac-probe", "--wait=false")


def test_nodes_are_registered_ready_and_heartbeating(sandbox: Sandbox) -> None:
    nodes = sandbox.kubectl_json("get", "nodes")["items"]
    names = sorted(n["metadata"]["name"] for n in nodes)
    assert names == [f"sandbox-node-{i}" for i in range(1, len(sandbox.nodes) + 1)]
    for n in nodes:
        labels = n["metadata"]["labels"]
        assert labels["kubernetes.io/hostname"] == n["metadata"]["name"]
        assert labels["kubernetes.io/os"] == "linux"
        assert labels["kubernetes.io/arch"]
        assert labels["failovervm.io/sandbox-node"] == "true"
        assert n["metadata"]["annotations"]["failovervm.io/libvirt-uri"].startswith("qemu+tcp://127.")
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        assert int(n["status"]["capacity"]["cpu"]) > 0
        assert not n.get("spec", {}).get("taints"), "node lifecycle controller tainted a sandbox node"
    lease = sandbox.kubectl_json("-n", "kube-node-lease", "get", "lease", "sandbox-node-1")
    renew = dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
    assert (dt.datetime.now(dt.UTC) - renew).total_seconds() < 40


def _pod(name: str, namespace: str, memory: str = "64Mi", **spec: object) -> dict[str, object]:
    """A plain Pod without nodeName (nothing runs it: the sandbox has no kubelet)."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": {"cpu": "10m", "memory": memory}}}], **spec},
    }


def _pod_scheduled(sandbox: Sandbox, namespace: str, name: str) -> dict[str, object] | None:
    pod = sandbox.kubectl_json("-n", namespace, "get", "pod", name)
    return next((c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), None)


@pytest.fixture
def pod_ns(sandbox: Sandbox) -> Iterator[str]:
    """A namespace for pods kube-scheduler binds. The heartbeat completes a bound pod's graceful
    deletion only once its grace period (30 s by default) is over, so they are force-deleted before
    the namespace goes, to free it at once."""
    ns = f"sched-{uuid.uuid4().hex[:6]}"
    sandbox.kubectl("create", "namespace", ns)
    try:
        yield ns
    finally:
        sandbox.kubectl("-n", ns, "delete", "pods", "--all", "--force", "--grace-period=0", check=False)
        sandbox.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_kube_scheduler_binds_a_pod_to_a_sandbox_node(sandbox: Sandbox, pod_ns: str) -> None:
    sandbox.kubectl("apply", "-f", "-", input=json.dumps(_pod("plain", pod_ns)))
    node = wait_for(lambda: sandbox.kubectl_json("-n", pod_ns, "get", "pod", "plain")["spec"].get("nodeName"),
                    30, what="kube-scheduler binding the pod")
    assert node in {n["node"] for n in sandbox.nodes}
    assert (_pod_scheduled(sandbox, pod_ns, "plain") or {}).get("status") == "True"
    scheduled = wait_for(lambda: events(sandbox, pod_ns, "Scheduled", "plain"), 15, what="the Scheduled Event")
    assert scheduled[0]["message"] == f"Successfully assigned {pod_ns}/plain to {node}"
    assert scheduled[0].get("reportingComponent") == "default-scheduler"
    # No kubelet: the pod is bound and nothing runs it.
    assert sandbox.kubectl_json("-n", pod_ns, "get", "pod", "plain")["status"]["phase"] == "Pending"


def test_kube_scheduler_reports_an_unschedulable_pod(sandbox: Sandbox, pod_ns: str) -> None:
    sandbox.kubectl("apply", "-f", "-",
                    input=json.dumps(_pod("nowhere", pod_ns, nodeSelector={"fvm-test/no-such-node": "true"})))
    cond = wait_for(lambda: (c := _pod_scheduled(sandbox, pod_ns, "nowhere")) and c.get("status") == "False" and c,
                    30, what="PodScheduled=False")
    assert cond["reason"] == "Unschedulable"
    n = len(sandbox.nodes)
    assert cond["message"].startswith(f"0/{n} nodes are available: {n} node(s) didn't match Pod's node "
                                      "affinity/selector."), cond["message"]
    assert not sandbox.kubectl_json("-n", pod_ns, "get", "pod", "nowhere")["spec"].get("nodeName")
    failed = wait_for(lambda: events(sandbox, pod_ns, "FailedScheduling", "nowhere"), 15,
                      what="the FailedScheduling Event")
    assert failed[0]["message"] == cond["message"]


def test_kube_scheduler_runs_as_system_kube_scheduler_with_least_privilege(sandbox: Sandbox) -> None:
    kc = sandbox.state_dir / "pki" / "kube-scheduler.kubeconfig"
    whoami = json.loads(sandbox.kubectl_as(kc, "auth", "whoami", "-o", "json", check=True).stdout)
    assert whoami["status"]["userInfo"]["username"] == "system:kube-scheduler"
    assert whoami["status"]["userInfo"]["groups"] == ["system:authenticated"]  # no system:masters
    for verb, resource, allowed in (
            ("create", "pods --subresource=binding", "yes"), ("patch", "pods --subresource=status", "yes"),
            ("delete", "pods", "yes"), ("list", "nodes", "yes"), ("create", "events.events.k8s.io", "yes"),
            ("get", "secrets", "no"), ("list", "secrets", "no"), ("create", "pods", "no"),
            ("update", "nodes", "no"), ("create", "clusterrolebindings", "no")):
        res = sandbox.kubectl_as(kc, "auth", "can-i", verb, *resource.split(), "--all-namespaces")
        assert res.stdout.strip() == allowed, (verb, resource, res.stdout, res.stderr)
        # The same answer for the user, asked by the admin through impersonation.
        imp = sandbox.kubectl("auth", "can-i", "--as", "system:kube-scheduler", verb, *resource.split(),
                              "--all-namespaces", check=False)
        assert imp.stdout.strip() == allowed, (verb, resource, imp.stdout, imp.stderr)
    # Leader election is off (one instance): no Lease is taken.
    assert sandbox.kubectl("-n", "kube-system", "get", "lease", "kube-scheduler", check=False).returncode != 0
    # HTTPS on loopback only, certificate from the sandbox CA; health is open, everything else is not.
    port = sandbox.data["scheduler"]["port"]
    ctx = ssl.create_default_context(cafile=str(sandbox.state_dir / "pki" / "ca.crt"))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=5) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=5)
    assert denied.value.code == 403
    # ... and an identity the apiserver authorizes (the admin's client certificate) may read it.
    ctx.load_cert_chain(str(sandbox.state_dir / "pki" / "admin.crt"), str(sandbox.state_dir / "pki" / "admin.key"))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=5) as resp:
        assert resp.status == 200 and b"scheduler_schedule_attempts_total" in resp.read()
    listening = {line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")}
    assert listening == {f"0100007F:{port:04X}"}
    assert not Path("/proc/net/tcp6").exists() or not any(
        line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
        for line in Path("/proc/net/tcp6").read_text().splitlines()[1:])


def test_node_extended_resources_survive_registration_and_heartbeat(sandbox: Sandbox, pod_ns: str) -> None:
    """What an agent advertises in a Node's status (vf.failovervm.io/<pool>) stays through the
    sandbox's re-registration and heartbeat, and kube-scheduler places by it."""
    from failovervm import kubeclient
    from failovervm_sandbox import nodes as nodes_mod
    from failovervm_sandbox.state import State

    # A test-owned name, so that no agent reconciling its own vf.failovervm.io/<pool> keys touches it.
    node, res = sandbox.nodes[-1]["node"], "fvm-test.io/vf-probe"
    sandbox.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"capacity": {res: "2"}, "allocatable": {res: "2"}}}))
    try:
        api = kubeclient.CoreV1Api(kubeclient.ApiClient(kubeclient.Configuration.from_kubeconfig(sandbox.kubeconfig)))
        nodes_mod.register(api, State(sandbox.state_dir).sandbox_nodes(),
                           sandbox.data["versions"]["KUBERNETES_VERSION"])
        nodes_mod.post_ready(api, node)
        st = sandbox.kubectl_json("get", "node", node)["status"]
        assert st["capacity"][res] == "2" and st["allocatable"][res] == "2"
        assert st["capacity"]["cpu"] == sandbox.data["node_cpu"]
        pod = _pod("wants-vf", pod_ns)
        pod["spec"]["containers"][0]["resources"] = {"requests": {res: "1"}, "limits": {res: "1"}}  # type: ignore[index]
        sandbox.kubectl("apply", "-f", "-", input=json.dumps(pod))
        bound = wait_for(lambda: sandbox.kubectl_json("-n", pod_ns, "get", "pod", "wants-vf")["spec"].get("nodeName"),
                         30, what="kube-scheduler binding the pod that requests the extended resource")
        assert bound == node
    finally:
        sandbox.kubectl("-n", pod_ns, "delete", "pod", "wants-vf", "--force", "--grace-period=0",
                        "--ignore-not-found", check=False)
        escaped = res.replace("/", "~1")
        sandbox.kubectl("patch", "node", node, "--subresource=status", "--type=json", "-p", json.dumps(
            [{"op": "remove", "path": f"/status/{k}/{escaped}"} for k in ("capacity", "allocatable")]),
            check=False)


def _bound_pods(sandbox: Sandbox, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = sandbox.kubectl_json("-n", namespace, "get", "pods", "-l", selector)["items"]
    return [p for p in pods if p["spec"].get("nodeName")]


def test_drain_completes_for_a_deployment_pod(sandbox: Sandbox, pod_ns: str) -> None:
    """No kubelet, yet the graceful deletion an eviction starts completes: the heartbeat confirms it
    (grace period 0, uid precondition) once the pod's grace period is over, so drain returns."""
    grace = 2  # not 0: a pod with terminationGracePeriodSeconds 0 is deleted at once, kubelet or not
    template = _pod("web", pod_ns)
    template["metadata"] = {"labels": {"app": "web"}}
    template["spec"]["terminationGracePeriodSeconds"] = grace  # type: ignore[index]
    sandbox.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": pod_ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {k: template[k] for k in ("metadata", "spec")}}}))
    pods = wait_for(lambda: len(bound := _bound_pods(sandbox, pod_ns, "app=web")) == 2 and bound, 60,
                    what="kube-scheduler binding the Deployment's 2 pods")
    victim = pods[0]
    node, uid = victim["spec"]["nodeName"], victim["metadata"]["uid"]
    try:
        start = time.monotonic()
        res = sandbox.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s",
                              check=False, timeout=90)
        took = time.monotonic() - start
        assert res.returncode == 0, (res.stdout, res.stderr)
        assert f"pod/{victim['metadata']['name']} evicted" in res.stdout, res.stdout
        left = sandbox.kubectl_json("-n", pod_ns, "get", "pods", "-l", "app=web")["items"]
        assert uid not in {p["metadata"]["uid"] for p in left}
        assert all(p["spec"].get("nodeName") != node for p in left), left
        assert took >= grace, f"drain took {took:.1f}s, less than the pod's grace period"
        log = (sandbox.state_dir / "logs" / "heartbeat.log").read_text()
        assert f"pod {pod_ns}/{victim['metadata']['name']} on {node}: grace period over, deletion completed" in log
        # The Deployment's replacement is bound to another node (the drained one is cordoned).
        wait_for(lambda: len(_bound_pods(sandbox, pod_ns, "app=web")) == 2, 60, what="the replacement bound")
        print(f"drain of {node} took {took:.1f}s (grace period {grace}s)")
    finally:
        sandbox.kubectl("uncordon", node, check=False)
        sandbox.kubectl("-n", pod_ns, "delete", "deployment", "web", "--ignore-not-found", check=False)


def test_each_libvirt_host_answers_with_a_distinct_uuid(sandbox: Sandbox) -> None:
    uuids = set()
    for node in sandbox.nodes:
        conn = libvirt.open(node["uri"])
        try:
            caps = etree.fromstring(conn.getCapabilities().encode())
            uuids.add(caps.findtext("host/uuid"))
            assert conn.getType() == "QEMU"
        finally:
            conn.close()
    assert len(uuids) == len(sandbox.nodes)


def _teaming_domain(name: str, sandbox: Sandbox) -> str:
    """A tiny halt-sector VM whose virtio NIC is a failover (teaming persistent) member."""
    accel = "kvm" if sandbox.data["accel"] == "kvm" else "qemu"
    halt = sandbox.images_dir / "halt.img"
    dom = E.domain(
        E.name(name),
        E.memory("32", unit="MiB"),
        E.vcpu("1"),
        E.os(E.type("hvm", machine="q35"), E.boot(dev="hd")),
        E.features(E.acpi(), E.apic()),
        E.devices(
            E.disk(E.driver(name="qemu", type="raw"), E.source(file=str(halt)), E.target(dev="vda", bus="virtio"),
                   E.readonly(), type="file", device="disk"),
            E.interface(E.mac(address="52:54:00:aa:bb:01"), E.source(bridge=sandbox.data["bridge"]),
                        E.model(type="virtio"), E.teaming(type="persistent"), E.alias(name="ua-standby"),
                        E.rom(enabled="no"), type="bridge"),
            E.memballoon(model="none"),
        ),
        type=accel,
    )
    return etree.tostring(dom, encoding="unicode")


def test_raw_live_migration_of_a_teaming_vm(sandbox: Sandbox) -> None:
    src_uri, dst_uri = sandbox.nodes[0]["uri"], sandbox.nodes[1]["uri"]
    src, dst = libvirt.open(src_uri), libvirt.open(dst_uri)
    name = "raw-migration-probe"
    try:
        dom = src.defineXML(_teaming_domain(name, sandbox))
        dom.create()
        pidfile = Path(sandbox.nodes[0]["root"]) / "run_libvirt" / "qemu" / f"{name}.pid"
        pid = int(pidfile.read_text())
        cmd = " ".join(procs.cmdline(pid))
        assert '"failover":true' in cmd or "failover=on" in cmd, cmd
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        dom.migrateToURI3(dst_uri, {}, flags)
        moved = dst.lookupByName(name)
        state, reason = moved.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        assert reason == libvirt.VIR_DOMAIN_RUNNING_MIGRATED
        with pytest.raises(libvirt.libvirtError):
            src.lookupByName(name)
        stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        assert stats.get("downtime") is not None
        xml = etree.fromstring(moved.XMLDesc(0).encode())
        assert xml.find("devices/interface/teaming").get("type") == "persistent"
    finally:
        for conn in (src, dst):
            remove_domain(conn, name)
            conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "failovervm.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and any(text in part for part in procs.cmdline(int(entry.name))):
            out.append(int(entry.name))
    return out


IDEM_NET = extra_sandbox_network(1)


def test_up_and_down_are_idempotent_and_leave_nothing(sandbox_prereqs: None) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="fvm-idem-"))
    args = ["--state-dir", str(state_dir)]
    up_args = ["sandbox", "up", "--no-operator", "--nodes", "1", "--vfs-per-node", "2",
               "--address-base", IDEM_NET[0], "--bridge", IDEM_NET[1], *args]
    try:
        first = _cli(*up_args)
        assert first.returncode == 0, first.stderr
        assert f"export KUBECONFIG={state_dir}/kubeconfig" in first.stdout
        pids1 = json.loads((state_dir / "sandbox.json").read_text())
        second = _cli(*up_args)
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stderr
        pids2 = json.loads((state_dir / "sandbox.json").read_text())
        for key in ("etcd", "apiserver", "controller_manager", "scheduler", "heartbeat", "libvirt-1"):
            assert pids1[key]["pid"] == pids2[key]["pid"], key
        st = _cli("sandbox", "status", "-o", "json", *args)
        assert st.returncode == 0, st.stdout
        report = json.loads(st.stdout)
        assert report["ok"] and report["accel"] in ("kvm", "tcg")
        assert {r["component"] for r in report["components"]} >= {
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "heartbeat",
            "libvirtd sandbox-node-1"}
        sched = next(r for r in report["components"] if r["component"] == "kube-scheduler")
        assert sched["ok"] and sched["rss_mib"] > 0 and "ready" in sched["detail"], sched
        all_pids = [pids2[k]["pid"] for k in ("etcd", "apiserver", "controller_manager", "scheduler", "heartbeat",
                                              "libvirt-1")]
    finally:
        down = _cli("sandbox", "down", *args)
    assert down.returncode == 0, down.stderr
    for pid in all_pids:
        assert not procs.alive(pid), pid
    assert _processes_mentioning(str(state_dir)) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(state_dir) not in mounts
    assert not Path("/sys/class/net", IDEM_NET[1]).exists()
    again = _cli("sandbox", "down", *args)
    assert again.returncode == 0
    st = _cli("sandbox", "status", *args)
    assert st.returncode != 0
