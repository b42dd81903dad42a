"""Helm install into a sandbox; the operator runs as local processes under exactly the chart's
ServiceAccount tokens, and the real RBAC authorizer proves the permissions are tight (issue #5)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from failovervm import labels
from failovervm_sandbox import procs
from failovervm_sandbox.binaries import binary_path
from failovervm_sandbox.controlplane import free_port
from tests.conftest import REPO, TEST_IMAGES_DIR, Sandbox, _cli, extra_sandbox_network, wait_for
from tests.e2e.helpers import apply, claims, domains_on, pool_manifest, wait_phase, wait_webhook
from tests.prereq import require

pytestmark = pytest.mark.e2e
NS = "fvm-helm"
RELEASE = "fvm"
CHART = REPO / "charts" / "failovervm-operator"


HELM_NET = extra_sandbox_network(2)


@pytest.fixture(scope="module")
def helm_sandbox(sandbox_prereqs: None) -> Iterator[Sandbox]:
    """A 1-node sandbox of its own, without the operator: the chart's identities run it here."""
    require(os.access(binary_path("helm"), os.X_OK), f"helm at {binary_path('helm')}")
    state_dir = Path(tempfile.mkdtemp(prefix="fvm-helm-sandbox-"))
    res = _cli("sandbox", "up", "--no-operator", "--nodes", "1", "--vfs-per-node", "4", "--state-dir",
               str(state_dir), "--images-dir", TEST_IMAGES_DIR, "--address-base", HELM_NET[0],
               "--bridge", HELM_NET[1])
    if res.returncode != 0:
        _cli("sandbox", "down", "--state-dir", str(state_dir))
        pytest.fail(f"sandbox up failed:\n{res.stderr}", pytrace=False)
    try:
        yield Sandbox(state_dir)
    finally:
        _cli("sandbox", "down", "--state-dir", str(state_dir))
        shutil.rmtree(state_dir, ignore_errors=True)


def _helm(sb: Sandbox, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(binary_path("helm")), "--kubeconfig", str(sb.kubeconfig), *args],
                         capture_output=True, text=True, timeout=180)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def _sa(sb: Sandbox, component: str) -> str:
    items = sb.kubectl_json("-n", NS, "get", "serviceaccounts", "-l",
                            f"app.kubernetes.io/component={component}")["items"]
    assert len(items) == 1, items
    return str(items[0]["metadata"]["name"])


def _token_kubeconfig(sb: Sandbox, sa: str, path: Path, node: str | None = None) -> Path:
    """A kubeconfig with a token of ServiceAccount `sa`; bound to Node `node` when given (the token then
    carries authentication.kubernetes.io/node-name, as an agent pod's projected token does)."""
    bound = ["--bound-object-kind", "Node", "--bound-object-name", node] if node else []
    token = sb.kubectl("-n", NS, "create", "token", sa, "--duration=2h", *bound).stdout.strip()
    return sb.token_kubeconfig(token, path)


def test_helm_install_operator_under_chart_identities(helm_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = helm_sandbox
    port = free_port()
    values = ["--set", f"storageRoots={{{TEST_IMAGES_DIR}}}", "--set", f"webhook.url=https://127.0.0.1:{port}",
              "--set", "agent.migration.transport=tcp", "--set", "agent.migration.allowInsecureTCP=true",
              "--set", "admissionPolicies.enabled=true"]
    _helm(sb, "install", RELEASE, str(CHART), "-n", NS, "--create-namespace", *values)
    status = json.loads(_helm(sb, "status", RELEASE, "-n", NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    # The chart's webhook certificate, for the locally running controller.
    secret = next(s for s in sb.kubectl_json("-n", NS, "get", "secrets")["items"]
                  if s["type"] == "kubernetes.io/tls")
    certs = tmp_path / "certs"
    certs.mkdir()
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (certs / key).write_bytes(base64.b64decode(secret["data"][key]))
    ctl_kc = _token_kubeconfig(sb, _sa(sb, "controller"), tmp_path / "controller.kubeconfig")
    node = sb.nodes[0]
    agent_kc = _token_kubeconfig(sb, _sa(sb, "agent"), tmp_path / "agent.kubeconfig", node["node"])
    logs = tmp_path / "logs"
    ctl = procs.spawn([sys.executable, "-m", "failovervm.cli", "controller", "--kubeconfig", str(ctl_kc),
                       "--storage-root", TEST_IMAGES_DIR, "--webhook-host", "127.0.0.1", "--webhook-port", str(port),
                       "--webhook-cert-dir", str(certs), "--webhook-unmanaged", "--namespace", NS,
                       "--metrics-port", "0"], logs / "controller.log")
    agent = procs.spawn([sys.executable, "-m", "failovervm.cli", "agent", "--kubeconfig", str(agent_kc),
                         "--node", node["node"], "--libvirt-uri", node["uri"], "--sysfs-root", node["sysfs_root"],
                         "--storage-root", TEST_IMAGES_DIR, "--metrics-port", "0"], logs / "agent.log")
    try:
        wait_webhook(port)
        # The #3 scenario, as a user: apply, Running, delete.
        apply(sb, pool_manifest("sandbox-pool", sb.data["bridge"], pfs=("sbxpf0",)))
        sb.kubectl("apply", "-f", str(REPO / "examples" / "failovervm.yaml"))
        vm = wait_phase(sb, "default", "demo", "Running", timeout=120)
        assert vm["status"]["nodeName"] == node["node"]
        # The agent, under the chart's identity, advertises the pool's VFs on its node as the
        # extended resource vf.failovervm.io/sandbox-pool, in capacity and allocatable (issue #11).
        resource = labels.vf_resource("sandbox-pool")

        def advertised() -> bool:
            # Its node's VFs, in the VFInventory named after the node, written under the chart's identity.
            inventory = sb.kubectl("get", "vfinventory", node["node"], "-o", "json", check=False)
            entries = json.loads(inventory.stdout)["spec"]["pools"] if inventory.returncode == 0 else []
            total = next((e.get("total") for e in entries if e["name"] == "sandbox-pool"), None)
            status = sb.kubectl_json("get", "node", node["node"])["status"]
            return bool(total) and all((status.get(f) or {}).get(resource) == str(total)
                                       for f in ("capacity", "allocatable"))

        wait_for(advertised, 30, what=f"{resource} on {node['node']}")
        assert vm["status"]["domain"]["name"] in domains_on(sb, node["node"])
        bad = sb.kubectl("apply", "-f", "-", check=False, input=json.dumps({
            "apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVM",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"cpu": 1, "memory": "32Mi", "network": {"pool": "sandbox-pool"},
                     "disks": [{"name": "d", "path": "/etc/shadow"}]}}))
        assert bad.returncode != 0 and "spec.disks[d].path" in bad.stderr
        _agents_act_only_for_their_own_node(sb, tmp_path, node["node"])
        sb.kubectl("delete", "-f", str(REPO / "examples" / "failovervm.yaml"), "--timeout=90s")
        assert vm["status"]["domain"]["name"] not in domains_on(sb, node["node"])
        assert not claims(sb)
        for log in ("controller.log", "agent.log"):
            # Every API denial says "forbidden" (reason Forbidden, "... is forbidden: User ...").
            # Not a bare "403": the log's millisecond timestamps contain it (",403 INFO").
            denials = [line for line in (logs / log).read_text().splitlines() if "forbidden" in line.lower()]
            assert not denials, f"{log}:\n" + "\n".join(denials[-20:])
    finally:
        procs.stop(ctl)
        procs.stop(agent)

    # -- least privilege, proven by the real RBAC authorizer ---------------------------------------
    def denied(kc: Path, *args: str) -> bool:
        res = sb.kubectl_as(kc, *args)
        return res.returncode != 0 and "forbidden" in res.stderr.lower()

    assert denied(agent_kc, "delete", "fvm", "anything", "-n", "default")
    assert denied(agent_kc, "get", "secrets", "-A")
    assert denied(agent_kc, "-n", NS, "get", "secrets")
    assert denied(agent_kc, "delete", "vfclaims", "--all")
    assert denied(ctl_kc, "get", "secrets", "-A")
    for kc, verb, resource, sub, expected in (
        (agent_kc, "delete", "failovervms.failovervm.io", "", "no"),
        (agent_kc, "get", "secrets", "", "no"),
        (agent_kc, "patch", "failovervms.failovervm.io", "status", "yes"),
        (agent_kc, "create", "vfclaims.failovervm.io", "", "no"),
        (ctl_kc, "create", "pods", "exec", "no"),
        (ctl_kc, "get", "secrets", "", "no"),
        (ctl_kc, "create", "vfclaims.failovervm.io", "", "yes"),
        (ctl_kc, "create", "macleases.failovervm.io", "", "yes"),
        (ctl_kc, "patch", "macleases.failovervm.io", "", "no"),
        (agent_kc, "create", "macleases.failovervm.io", "", "no"),
        (ctl_kc, "patch", "nodes", "", "no"),
        # The agent advertises its node's VFs (extended resources in the Node's status); it may not
        # touch the Node itself (labels, taints, spec). The controller writes neither.
        (agent_kc, "patch", "nodes", "status", "yes"),
        (agent_kc, "update", "nodes", "status", "no"),
        (agent_kc, "patch", "nodes", "", "no"),
        (ctl_kc, "patch", "nodes", "status", "no"),
        (ctl_kc, "patch", "pods", "", "yes"),  # VM pods, in the VMs' namespaces
        # Migration policies: the controller reads them (a watch cache), nobody of ours writes them.
        (ctl_kc, "watch", "failovermigrationpolicies.failovervm.io", "", "yes"),
        (ctl_kc, "create", "failovermigrationpolicies.failovervm.io", "", "no"),
        (agent_kc, "list", "failovermigrationpolicies.failovervm.io", "", "no"),
    ):
        extra = [f"--subresource={sub}"] if sub else []
        res = sb.kubectl_as(kc, "auth", "can-i", verb, resource, *extra, "-A")
        assert res.stdout.strip() == expected, (verb, resource, sub, res.stdout, res.stderr)

    # -- upgrade with changed values keeps the certificate -------------------------------------------
    _helm(sb, "upgrade", RELEASE, str(CHART), "-n", NS, *values, "--set", "webhook.timeoutSeconds=5")
    hooks = sb.kubectl_json("get", "validatingwebhookconfigurations", "-l",
                            f"app.kubernetes.io/instance={RELEASE}")["items"]
    assert hooks and all(h["timeoutSeconds"] == 5 for h in hooks[0]["webhooks"])
    secret2 = next(s for s in sb.kubectl_json("-n", NS, "get", "secrets")["items"]
                   if s["type"] == "kubernetes.io/tls")
    assert secret2["data"]["tls.crt"] == secret["data"]["tls.crt"]

    # -- uninstall leaves no operator objects (CRDs stay, as Helm documents) -------------------------
    _helm(sb, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "60s")
    sel = f"app.kubernetes.io/instance={RELEASE}"
    for kind in ("deployments", "daemonsets", "services", "secrets", "serviceaccounts", "roles", "rolebindings"):
        assert not sb.kubectl_json("-n", NS, "get", kind, "-l", sel)["items"], kind
    for kind in ("clusterroles", "clusterrolebindings", "validatingwebhookconfigurations",
                 "validatingadmissionpolicies", "validatingadmissionpolicybindings", "clusterkopfpeerings.kopf.dev"):
        assert not sb.kubectl_json("get", kind, "-l", sel)["items"], kind
    crds = {c["metadata"]["name"] for c in sb.kubectl_json("get", "crd")["items"]}
    assert "failovervms.failovervm.io" in crds


def _agents_act_only_for_their_own_node(sb: Sandbox, tmp_path: Path, node: str) -> None:
    """Issue #14, on the real authorizer and admission chain: the chart's ValidatingAdmissionPolicy
    refuses the agent's ServiceAccount any write about another node. The agent of `node` runs the demo
    VM (so its own writes pass); a token of the same ServiceAccount bound to another Node may not touch
    that VM nor `node`'s status, and a token bound to no node may not write at all. (The helm sandbox
    has one node: the other is a Node object only, which is all a token binding needs.)"""
    other = "fvm-test-other-node"
    sb.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node",
                                                     "metadata": {"name": other}}))
    try:
        _refused_for_other_nodes(sb, tmp_path, node, other)
    finally:
        sb.kubectl("delete", "node", other, "--ignore-not-found", check=False)


def _refused_for_other_nodes(sb: Sandbox, tmp_path: Path, node: str, other: str) -> None:
    sa = _sa(sb, "agent")
    other_kc = _token_kubeconfig(sb, sa, tmp_path / "other-agent.kubeconfig", other)
    unbound_kc = _token_kubeconfig(sb, sa, tmp_path / "unbound-agent.kubeconfig")
    forged = '{"status":{"message":"forged by another node"}}'
    res = sb.kubectl_as(other_kc, "-n", "default", "patch", "fvm", "demo", "--subresource=status", "--type=merge",
                        "-p", forged)
    assert res.returncode != 0 and "failovervm agent-own-node" in res.stderr, res.stderr
    assert f"the agent of node {other} may only write FailoverVMs that run on it" in res.stderr
    assert f"default/demo runs on {node}" in res.stderr
    res = sb.kubectl_as(other_kc, "-n", "default", "label", "fvm", "demo", "forged=yes")
    assert res.returncode != 0 and "may only write FailoverVMs that run on it" in res.stderr, res.stderr
    # As the agent writes it: a PATCH of nodes/status without reading it first (no get on nodes/status).
    from failovervm import kubeclient

    api = kubeclient.CoreV1Api(kubeclient.ApiClient(kubeclient.Configuration.from_kubeconfig(other_kc)))
    try:
        api.patch_node_status(node, {"status": {"capacity": {"vf.failovervm.io/forged": "64"}}})
        raise AssertionError(f"the agent of {other} patched {node}'s status")
    except kubeclient.ApiException as exc:
        assert exc.status == 403 and f"may only write its own Node's status, not {node}'s" in str(exc.body), exc.body
    res = sb.kubectl_as(unbound_kc, "-n", "default", "patch", "fvm", "demo", "--subresource=status",
                        "--type=merge", "-p", forged)
    assert res.returncode != 0 and "carries no node name" in res.stderr, res.stderr
    status = sb.kubectl_json("-n", "default", "get", "fvm", "demo")["status"]
    assert status.get("message") != "forged by another node" and status["nodeName"] == node
    # Nobody but the controller marks a migration as an evacuation (not even a cluster administrator).
    res = sb.kubectl("--as", "mallory", "--as-group", "system:masters", "apply", "-f", "-", check=False,
                     input=json.dumps({"apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVMMigration",
                                       "metadata": {"name": "fake-evacuation", "namespace": "default",
                                                    "labels": {"failovervm.io/evacuation": node}},
                                       "spec": {"vmName": "demo"}}))
    assert res.returncode != 0 and "only the operator marks a migration as an evacuation" in res.stderr, res.stderr
