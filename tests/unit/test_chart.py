"""The Helm chart charts/failovervm-operator: lint, rendering, RBAC, pods, webhook, CRDs and values schema.

Offline: `helm lint --strict` and `helm template --kube-version <the targeted Kubernetes>` with the
pinned helm binary; the rendered YAML is parsed and checked. A missing helm skips locally and fails
under CI=true.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from failovervm import labels
from failovervm.cli import build_parser
from tests.prereq import require

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "failovervm-operator"
KUBE_VERSION = "v1.36.3"
RELEASE = "fvm"
NAMESPACE = "failovervm-system"
CERT_MANAGER = ("--api-versions", "cert-manager.io/v1")

Doc = dict[str, Any]
Render = Callable[..., list[Doc]]


# -- helm --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def helm() -> Path:
    from failovervm_sandbox.binaries import binary_path

    path = binary_path("helm")
    require(os.access(path, os.X_OK), f"helm binary at {path} (run hack/build-binaries.sh helm)")
    return path


def run_helm(helm: Path, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                           "--kube-version", KUBE_VERSION, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    cache: dict[tuple[str, ...], list[Doc]] = {}

    def _render(*args: str) -> list[Doc]:
        if args not in cache:
            res = run_helm(helm, *args)
            assert res.returncode == 0, f"helm template {' '.join(args)} failed:\n{res.stderr}"
            cache[args] = [d for d in yaml.safe_load_all(res.stdout) if d]
        return cache[args]

    return _render


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[Doc]) -> list[str]:
    return [d["kind"] for d in docs]


def container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def volumes_of(workload: Doc) -> dict[str, Doc]:
    return {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}


def mounts_of(c: Doc) -> dict[str, Doc]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


SCENARIOS: dict[str, tuple[str, ...]] = {
    "default": (),
    "cert-manager": (*CERT_MANAGER, "--set", "webhook.certManager.enabled=true"),
    "no-eviction-guard": ("--set", "webhook.evictionGuard.enabled=false"),
    "extra-storage-roots": ("--set-json", 'storageRoots=["/srv/vms","/mnt/nfs/images","/var/lib/failovervm/images"]'),
    "standalone": ("--set", "controller.peering.enabled=false", "--set", "controller.replicas=1"),
    "migration-tls-secret": ("--set", "agent.migration.tlsSecretName=libvirt-migration-tls"),
    "insecure-tcp": ("--set", "agent.migration.transport=tcp", "--set", "agent.migration.allowInsecureTCP=true"),
    "require-failover-ready": ("--set", "controller.requireFailoverReady=true"),
    "migration-history": ("--set", "controller.migrationHistory=0"),
    "handover-timeout": ("--set", "controller.migrationHandoverTimeoutSeconds=0"),
    "vm-pods": ("--set", "image.digest=sha256:" + "a" * 64, "--set", "controller.vmPods.overhead.cpu=250m",
                "--set", "controller.vmPods.overhead.memory=0.5Gi"),
    "vm-pod-image": ("--set", "controller.vmPods.image=registry.example/holder:1"),
}


# -- lint and render -----------------------------------------------------------------------------------

def test_helm_lint_strict(helm: Path) -> None:
    res = subprocess.run([str(helm), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "failovervm-operator"
    assert chart["appVersion"] == project["version"] == "0.1.0"
    # The version check is in the templates (failovervm.kubeVersionCheck), so that plain
    # `helm template` renders; test_kube_version_constraint proves it still refuses.
    assert "kubeVersion" not in chart


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_renders(render: Render, scenario: str) -> None:
    docs = render(*SCENARIOS[scenario])
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
        if d["kind"] not in {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration",
                             "ClusterKopfPeering", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}:
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} {d['metadata']['name']}"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"
    for kind in ("Deployment", "DaemonSet", "Service", "ValidatingWebhookConfiguration"):
        assert kinds(docs).count(kind) == 1, kind
    assert kinds(docs).count("ServiceAccount") == 2
    # The controller's and the agent's, and the tenants' two aggregated ones (tenant-rbac.yaml).
    assert kinds(docs).count("ClusterRole") == 4
    assert kinds(docs).count("ClusterRoleBinding") == 2
    # The agent's own-node policy and the evacuation-label policy, each bound (issue #14).
    assert kinds(docs).count("ValidatingAdmissionPolicy") == kinds(docs).count("ValidatingAdmissionPolicyBinding") == 2


def test_kube_version_constraint(helm: Path) -> None:
    res = subprocess.run([str(helm), "template", RELEASE, str(CHART), "--kube-version", "v1.33.0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "kubeVersion" in res.stderr or "1.34" in res.stderr, res.stderr


def test_plain_helm_template_renders(helm: Path) -> None:
    """No --kube-version (GitOps pipelines): Helm assumes v1.20.0 without a cluster; the chart still
    renders, with its version check left to the install (where `lookup` reaches the cluster)."""
    res = subprocess.run([str(helm), "template", RELEASE, str(CHART)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "kind: Deployment" in res.stdout


def test_controller_is_highly_available_by_default(render: Render) -> None:
    docs = render()
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2
    args = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert args[args.index("--peering-lifetime") + 1] == "10"
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"] == dep["spec"]["selector"]
    single = render("--set", "controller.replicas=1")
    assert "PodDisruptionBudget" not in kinds(single)


# -- RBAC ------------------------------------------------------------------------------------------------

def rules_of(role: Doc) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs; a rule naming several groups or resources is expanded."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


CONTROLLER_RULES = {
    ("failovervm.io", "failovervms"): {"get", "list", "watch", "patch", "update"},
    ("failovervm.io", "failovervms/status"): {"get", "update", "patch"},
    ("failovervm.io", "failovervms/finalizers"): {"update"},
    ("failovervm.io", "failovervmmigrations"): {"get", "list", "watch", "create", "delete", "patch", "update"},
    ("failovervm.io", "failovervmmigrations/status"): {"get", "update", "patch"},
    ("failovervm.io", "vfpools"): {"get", "list", "watch", "patch"},
    ("failovervm.io", "vfpools/status"): {"get", "update", "patch"},
    ("failovervm.io", "vfclaims"): {"get", "list", "watch", "create", "delete", "patch"},
    ("failovervm.io", "macleases"): {"get", "list", "watch", "create", "delete"},
    ("failovervm.io", "vfinventories"): {"get", "list", "watch"},
    ("failovervm.io", "failovermigrationpolicies"): {"get", "list", "watch"},
    ("", "nodes"): {"get", "list", "watch"},
    ("", "pods"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
}

AGENT_RULES = {
    ("failovervm.io", "failovervms"): {"get", "list", "watch", "patch"},
    ("failovervm.io", "failovervms/status"): {"get", "update", "patch"},
    ("failovervm.io", "failovervmmigrations"): {"get", "list", "watch"},
    ("failovervm.io", "failovervmmigrations/status"): {"get", "update", "patch"},
    ("failovervm.io", "vfpools"): {"get", "list", "watch"},
    ("failovervm.io", "vfinventories"): {"get", "create", "update"},  # its node's, named after it (#14)
    ("", "nodes"): {"get", "list", "watch"},
    ("", "nodes/status"): {"patch"},  # its node's vf.failovervm.io/<pool> extended resources
    ("", "events"): {"create", "patch"},
}


def component_rbac(docs: list[Doc], workload_kind: str) -> tuple[Doc, Doc, Doc]:
    """The ServiceAccount, ClusterRole and ClusterRoleBinding the workload runs with."""
    workload = one(docs, workload_kind)
    sa_name = workload["spec"]["template"]["spec"]["serviceAccountName"]
    sa = one(docs, "ServiceAccount", sa_name)
    bindings = [b for b in docs if b["kind"] == "ClusterRoleBinding"
                and {"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE} in b["subjects"]]
    assert len(bindings) == 1, f"{sa_name}: {len(bindings)} bindings"
    binding = bindings[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
    assert binding["roleRef"]["kind"] == "ClusterRole"
    role = one(docs, "ClusterRole", binding["roleRef"]["name"])
    return sa, role, binding


def test_rbac_one_identity_per_component(render: Render) -> None:
    docs = render()
    controller = component_rbac(docs, "Deployment")
    agent = component_rbac(docs, "DaemonSet")
    for c_obj, a_obj in zip(controller, agent, strict=True):
        assert c_obj["metadata"]["name"] != a_obj["metadata"]["name"]
    assert "controller" in controller[0]["metadata"]["name"]
    assert "agent" in agent[0]["metadata"]["name"]
    assert not [d for d in docs if d["kind"] in {"Role", "RoleBinding"}], "no namespaced grants needed"


def assert_no_wildcards(role: Doc) -> None:
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {rule}"
        assert "resourceNames" not in rule or rule["resourceNames"]


def test_controller_role_least_privilege(render: Render) -> None:
    _, role, _ = component_rbac(render(), "Deployment")
    assert_no_wildcards(role)
    rules = rules_of(role)
    assert rules == CONTROLLER_RULES
    resources = {r for _, r in rules}
    assert "pods/exec" not in resources and "pods/attach" not in resources
    assert "secrets" not in resources
    assert "delete" not in rules[("failovervm.io", "failovervms")]


def test_agent_role_least_privilege(render: Render) -> None:
    _, role, _ = component_rbac(render(), "DaemonSet")
    assert_no_wildcards(role)
    rules = rules_of(role)
    assert rules == AGENT_RULES
    assert "delete" not in rules[("failovervm.io", "failovervms")]
    assert "secrets" not in {r for _, r in rules}
    assert not any(r.startswith("pods") for _, r in rules)
    # The Node's status only (extended resources), never the Node itself (labels, taints, spec).
    assert "patch" not in rules[("", "nodes")] and "update" not in rules[("", "nodes/status")]


# -- the controller -----------------------------------------------------------------------------------

def controller_argv(docs: list[Doc]) -> list[str]:
    c = container(one(docs, "Deployment"))
    return list(c["command"]) + list(c.get("args", []))


def agent_argv(docs: list[Doc]) -> list[str]:
    c = container(one(docs, "DaemonSet"))
    return list(c["command"]) + list(c.get("args", []))


def test_controller_command(render: Render) -> None:
    assert controller_argv(render()) == [
        "failovervm", "controller", "--storage-root", "/var/lib/failovervm/images",
        "--webhook-host", "0.0.0.0", "--webhook-port", "9443", "--webhook-cert-dir", "/certs",
        "--webhook-unmanaged", "--namespace", NAMESPACE, "--metrics-port", "8080", "--health-port", "8081",
        "--peering-lifetime", "10", "--migration-history", "5", "--migration-handover-timeout", "120",
        "--vm-pod-image", "ghcr.io/failovervm/failovervm-operator:0.1.0",
        "--vm-overhead-cpu", "100m", "--vm-overhead-memory", "160Mi",
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_commands_are_accepted_by_the_cli(render: Render, scenario: str) -> None:
    """The rendered argv parse with failovervm's own argument parser (no flag the CLI lacks)."""
    docs = render(*SCENARIOS[scenario])
    storage_roots = [str(r) for r in yaml.safe_load((CHART / "values.yaml").read_text())["storageRoots"]]
    if scenario == "extra-storage-roots":
        storage_roots = ["/srv/vms", "/mnt/nfs/images", "/var/lib/failovervm/images"]
    ctl = controller_argv(docs)
    assert ctl[0] == "failovervm"
    args = build_parser().parse_args(ctl[1:])
    assert args.command == "controller"
    assert args.storage_root == storage_roots
    assert (args.webhook_host, args.webhook_port, args.webhook_cert_dir) == ("0.0.0.0", 9443, "/certs")
    assert args.webhook_unmanaged is True
    assert (args.metrics_port, args.health_port) == (8080, 8081)
    assert args.standalone is (scenario == "standalone")
    assert args.require_failover_ready is (scenario == "require-failover-ready")
    assert args.migration_history == (0 if scenario == "migration-history" else 5)
    assert args.migration_handover_timeout == (0 if scenario == "handover-timeout" else 120)
    # The VM pods' holder is the controller's own image unless told otherwise.
    assert args.vm_pod_image == ("registry.example/holder:1" if scenario == "vm-pod-image"
                                 else container(one(docs, "Deployment"))["image"])
    assert (args.vm_overhead_cpu, args.vm_overhead_memory) == (
        ("250m", "0.5Gi") if scenario == "vm-pods" else ("100m", "160Mi"))

    ag = agent_argv(docs)
    assert ag[0] == "failovervm"
    args = build_parser().parse_args([a.replace("$(NODE_NAME)", "node-1") for a in ag[1:]])
    assert args.command == "agent"
    assert args.node == "node-1"
    assert args.libvirt_uri == "qemu:///system"
    assert args.sysfs_root == "/sys"
    assert args.storage_root == storage_roots
    assert args.metrics_port == 8080


def test_controller_deployment(render: Render) -> None:
    docs = render()
    dep = one(docs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    # Upgrades keep the webhooks answered: a new replica is ready before an old one stops.
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(dep)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["image"] == "ghcr.io/failovervm/failovervm-operator:0.1.0"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 8081}, probe
    assert {p["containerPort"] for p in c["ports"]} == {9443, 8080, 8081}
    vols, mounts = volumes_of(dep), mounts_of(c)
    assert vols[mounts["/tmp"]["name"]] == {"name": mounts["/tmp"]["name"], "emptyDir": {}}
    certs = vols[mounts["/certs"]["name"]]["secret"]
    assert mounts["/certs"].get("readOnly") is True
    assert {i["key"]: i["path"] for i in certs["items"]} == {"ca.crt": "ca.crt", "tls.crt": "tls.crt",
                                                             "tls.key": "tls.key"}
    assert certs["secretName"] == one(docs, "Secret")["metadata"]["name"]
    assert c["resources"] == yaml.safe_load((CHART / "values.yaml").read_text())["controller"]["resources"]


def test_controller_values(render: Render) -> None:
    docs = render("--set", "controller.replicas=3", "--set", "controller.resources.limits.memory=1Gi",
                  "--set", "image.tag=1.2.3", "--set", "image.pullPolicy=Always")
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    c = container(dep)
    assert c["resources"]["limits"]["memory"] == "1Gi"
    assert c["image"] == "ghcr.io/failovervm/failovervm-operator:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    assert container(one(docs, "DaemonSet"))["image"] == c["image"], "one image for both components"
    digest = "sha256:" + "ab" * 32
    docs = render("--set", f"image.digest={digest}")
    assert container(one(docs, "Deployment"))["image"] == f"ghcr.io/failovervm/failovervm-operator@{digest}"


def test_kopf_peering(render: Render) -> None:
    peering = one(render(), "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "failovervm"
    from failovervm.labels import PEERING_NAME

    assert peering["metadata"]["name"] == PEERING_NAME
    standalone = render(*SCENARIOS["standalone"])
    assert "ClusterKopfPeering" not in kinds(standalone)
    assert "--standalone" in controller_argv(standalone)


# -- the agent ------------------------------------------------------------------------------------------

def test_agent_daemonset(render: Render) -> None:
    ds = one(render(), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    assert c["securityContext"]["privileged"] is True
    assert c["securityContext"]["runAsUser"] == 0
    env = env_of(c)
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["FAILOVERVM_MIGRATION_TRANSPORT"]["value"] == "tls"
    assert "FAILOVERVM_MIGRATION_PKI_DIR" not in env
    argv = agent_argv(render())
    assert argv[argv.index("--node") + 1] == "$(NODE_NAME)"
    tolerations = pod["tolerations"]
    for key in ("node.kubernetes.io/unschedulable", "ToBeDeletedByClusterAutoscaler"):
        assert {"key": key, "operator": "Exists", "effect": "NoSchedule"} in tolerations, key
    vols, mounts = volumes_of(ds), mounts_of(c)

    def host_path(mount_path: str) -> str:
        return str(vols[mounts[mount_path]["name"]]["hostPath"]["path"])

    assert host_path("/sys") == "/sys" and mounts["/sys"]["readOnly"] is True
    assert host_path("/dev/vfio") == "/dev/vfio"
    assert host_path("/run/libvirt") == "/run/libvirt"
    assert not mounts["/run/libvirt"].get("readOnly")
    root = "/var/lib/failovervm/images"
    assert host_path(root) == root
    assert not mounts[root].get("readOnly"), "VMs write their disks: the storage roots are read-write"
    assert "/etc/pki/libvirt-migrate" not in mounts


def test_agent_values(render: Render) -> None:
    docs = render("--set", "agent.libvirtURI=qemu+ssh://localhost/system",
                  "--set-json", 'agent.nodeSelector={"failovervm.io/node":"true"}',
                  "--set-json", 'agent.tolerations=[{"key":"dedicated","operator":"Equal","value":"vm",'
                                '"effect":"NoSchedule"}]')
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"failovervm.io/node": "true"}
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["node.kubernetes.io/unschedulable", "ToBeDeletedByClusterAutoscaler", "dedicated"]
    argv = agent_argv(docs)
    assert argv[argv.index("--libvirt-uri") + 1] == "qemu+ssh://localhost/system"


def test_extra_storage_roots_mounted_read_write(render: Render) -> None:
    roots = ["/srv/vms", "/mnt/nfs/images", "/var/lib/failovervm/images"]
    docs = render(*SCENARIOS["extra-storage-roots"])
    for argv in (controller_argv(docs), agent_argv(docs)):
        assert [argv[i + 1] for i, a in enumerate(argv) if a == "--storage-root"] == roots
    ds = one(docs, "DaemonSet")
    vols, mounts = volumes_of(ds), mounts_of(container(ds))
    for root in roots:
        assert vols[mounts[root]["name"]]["hostPath"]["path"] == root
        assert not mounts[root].get("readOnly")
    dep = one(docs, "Deployment")
    assert not set(roots) & set(mounts_of(container(dep))), "the controller only validates paths"


def test_migration_tls_secret(render: Render) -> None:
    ds = one(render(*SCENARIOS["migration-tls-secret"]), "DaemonSet")
    c = container(ds)
    mount = mounts_of(c)["/etc/pki/libvirt-migrate"]
    assert mount["readOnly"] is True
    secret = volumes_of(ds)[mount["name"]]["secret"]
    assert secret["secretName"] == "libvirt-migration-tls"
    assert {i["key"]: i["path"] for i in secret["items"]} == {
        "ca.crt": "cacert.pem", "tls.crt": "clientcert.pem", "tls.key": "clientkey.pem"}
    assert env_of(c)["FAILOVERVM_MIGRATION_PKI_DIR"]["value"] == "/etc/pki/libvirt-migrate"


def test_insecure_tcp_when_allowed(render: Render) -> None:
    c = container(one(render(*SCENARIOS["insecure-tcp"]), "DaemonSet"))
    assert env_of(c)["FAILOVERVM_MIGRATION_TRANSPORT"]["value"] == "tcp"


# -- the webhook -------------------------------------------------------------------------------------

def webhooks_by_name(docs: list[Doc]) -> dict[str, Doc]:
    return {w["name"]: w for w in one(docs, "ValidatingWebhookConfiguration")["webhooks"]}


def check_webhook_routing(docs: list[Doc], eviction_guard: bool) -> None:
    svc = one(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": 9443, "protocol": "TCP"}]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items(), "the Service selects the controller pods"
    hooks = webhooks_by_name(docs)
    assert set(hooks) == ({"failovervm-validate.failovervm.io", "vm-pod-eviction.failovervm.io"}
                          if eviction_guard else {"failovervm-validate.failovervm.io"})
    validate = hooks["failovervm-validate.failovervm.io"]
    assert validate["clientConfig"]["service"] == {"name": svc["metadata"]["name"], "namespace": NAMESPACE,
                                                   "path": "/failovervm-validate", "port": 443}
    assert validate["rules"] == [{"apiGroups": ["failovervm.io"], "apiVersions": ["v1alpha1"],
                                  "operations": ["CREATE", "UPDATE"], "resources": ["failovervms"],
                                  "scope": "Namespaced"}]
    assert validate["failurePolicy"] == "Fail"
    assert validate["sideEffects"] == "None"
    assert validate["matchConditions"] == [{"name": "spec-changes", "expression": labels.VALIDATE_SPEC_CHANGES}]
    assert validate["admissionReviewVersions"] == ["v1"]
    if eviction_guard:
        evict = hooks["vm-pod-eviction.failovervm.io"]
        assert evict["clientConfig"]["service"]["path"] == "/vm-pod-eviction"
        assert evict["clientConfig"]["service"]["name"] == svc["metadata"]["name"]
        assert evict["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                   "resources": ["pods/eviction"], "scope": "Namespaced"}]
        # Fail closed, but only for pods named like VM pods, in any namespace but kube-system (VM pods
        # live in the VMs' namespaces).
        assert evict["failurePolicy"] == "Fail"
        assert evict["sideEffects"] == "NoneOnDryRun"
        assert evict["admissionReviewVersions"] == ["v1"]
        assert "objectSelector" not in evict
        assert evict["namespaceSelector"] == {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}
        assert evict["matchConditions"] == [{"name": "vm-pods-only",
                                             "expression": "request.name.startsWith('fvm-')"}]


def test_the_sandbox_registers_the_charts_webhooks() -> None:
    """The sandbox's registration (operator_procs) routes the same requests as the chart's."""
    from failovervm_sandbox.operator_procs import webhook_configuration

    sandbox = {w["name"]: w for w in webhook_configuration(9443, b"ca", NAMESPACE)["webhooks"]}
    evict = sandbox["vm-pod-eviction.failovervm.io"]
    assert evict["clientConfig"]["url"].endswith("/vm-pod-eviction")
    assert evict["matchConditions"] == [{"name": "vm-pods-only", "expression": "request.name.startsWith('fvm-')"}]
    assert evict["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}
    assert (evict["failurePolicy"], evict["sideEffects"]) == ("Fail", "NoneOnDryRun")
    assert set(sandbox) == {"failovervm-validate.failovervm.io", "vm-pod-eviction.failovervm.io"}
    assert sandbox["failovervm-validate.failovervm.io"]["matchConditions"] == [
        {"name": "spec-changes", "expression": labels.VALIDATE_SPEC_CHANGES}]


def test_webhook_path_is_kopfs() -> None:
    """Kopf serves a validating handler at /<handler id>; the chart's path must be that id."""
    text = (REPO / "operator" / "failovervm" / "controller" / "main.py").read_text()
    assert re.search(r'@kopf\.on\.validate\([^)]*id="failovervm-validate"', text)
    assert re.search(r'@kopf\.on\.validate\([^)]*id="vm-pod-eviction"', text)


def verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    key = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    else:
        raise AssertionError(f"unexpected CA key type {type(key)}")


def test_webhook_default_generated_certificate(render: Render) -> None:
    docs = render()
    check_webhook_routing(docs, eviction_guard=True)
    vwc = one(docs, "ValidatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in (vwc["metadata"].get("annotations") or {})
    secret = one(docs, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    for hook in vwc["webhooks"]:
        assert hook["clientConfig"]["caBundle"], f"{hook['name']}: empty caBundle"
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    verify_signed_by(leaf, ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    svc = one(docs, "Service")["metadata"]["name"]
    assert f"{svc}.{NAMESPACE}.svc" in sans
    assert base64.b64decode(secret["data"]["tls.key"]).startswith(b"-----BEGIN")
    webhook_tpl = (CHART / "templates" / "webhook.yaml").read_text()
    assert re.search(r'lookup "v1" "Secret" \.Release\.Namespace', webhook_tpl), "reuse the Secret on upgrade"


def test_webhook_cert_manager(render: Render) -> None:
    docs = render(*SCENARIOS["cert-manager"])
    check_webhook_routing(docs, eviction_guard=True)
    assert "Secret" not in kinds(docs), "cert-manager writes the Secret"
    cert = one(docs, "Certificate")
    issuer = one(docs, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    svc = one(docs, "Service")["metadata"]["name"]
    assert f"{svc}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    dep = one(docs, "Deployment")
    certs_volume = volumes_of(dep)[mounts_of(container(dep))["/certs"]["name"]]
    assert certs_volume["secret"]["secretName"] == cert["spec"]["secretName"]
    vwc = one(docs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{NAMESPACE}/{cert['metadata']['name']}"
    for hook in vwc["webhooks"]:
        assert "caBundle" not in hook["clientConfig"], "the CA injector fills caBundle"


def test_cert_manager_requires_its_api(helm: Path) -> None:
    res = run_helm(helm, "--set", "webhook.certManager.enabled=true")
    assert res.returncode != 0
    assert "cert-manager" in res.stderr


def test_eviction_guard_disabled(render: Render) -> None:
    check_webhook_routing(render(*SCENARIOS["no-eviction-guard"]), eviction_guard=False)


# -- CRDs ------------------------------------------------------------------------------------------------

def test_chart_crds_identical_to_top_level() -> None:
    top = {p.name: p for p in (REPO / "crds").iterdir() if p.is_file()}
    chart = {p.name: p for p in (CHART / "crds").iterdir() if p.is_file()}
    assert set(chart) == set(top), f"only in crds/: {set(top) - set(chart)}; only in the chart: " \
        f"{set(chart) - set(top)}"
    drifted = [name for name in top if top[name].read_bytes() != chart[name].read_bytes()]
    assert not drifted, f"charts/failovervm-operator/crds/ differs from crds/: {drifted} (cp crds/*.yaml " \
        "charts/failovervm-operator/crds/)"
    assert "kopf-peering.yaml" in chart


def test_crd_upgrade_is_documented() -> None:
    command = "kubectl apply --server-side -f crds/"
    assert command in (CHART / "templates" / "NOTES.txt").read_text()
    assert command in (REPO / "docs" / "helm.md").read_text()


# -- values and schema -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "field"), [
    (("--set", "controller.replicas=0"), "replicas"),
    (("--set", "controller.replicas=two"), "replicas"),
    (("--set-json", "storageRoots=[]"), "storageRoots"),
    (("--set-json", 'storageRoots=["relative/path"]'), "storageRoots"),
    (("--set", "agent.migration.transport=tcp"), "allowInsecureTCP"),
    (("--set", "agent.migration.transport=udp"), "transport"),
    (("--set", "bogusKey=1"), "bogusKey"),
    (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
    (("--set", "controller.peering.enabled=false", "--set", "controller.replicas=2"), "replicas"),
    (("--set", "webhook.evictionGuard.enabled=maybe"), "enabled"),
    (("--set", "controller.bogus=1"), "bogus"),
    (("--set", "controller.migrationHistory=-1"), "migrationHistory"),
    (("--set", "controller.migrationHandoverTimeoutSeconds=-5"), "migrationHandoverTimeoutSeconds"),
    (("--set", "controller.vmPods.overhead.memory=lots"), "memory"),
    (("--set", "controller.vmPods.overhead.cpu=-1"), "cpu"),
    (("--set", "controller.vmPods.bogus=1"), "bogus"),
], ids=["replicas-0", "replicas-string", "storage-roots-empty", "storage-root-relative", "tcp-not-allowed",
        "bad-transport", "unknown-top-level-key", "bad-pull-policy", "standalone-replicas", "bad-bool",
        "unknown-nested-key", "negative-history", "negative-handover-timeout", "bad-overhead-memory",
        "negative-overhead-cpu", "unknown-vm-pods-key"])
def test_schema_rejects(helm: Path, args: tuple[str, ...], field: str) -> None:
    res = run_helm(helm, *args)
    assert res.returncode != 0, f"{args} rendered"
    assert "schema" in res.stderr and field in res.stderr, res.stderr


def test_schema_is_draft_07() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
    assert set(schema["properties"]) - set(values) <= {"global"}, "every schema property has a default"


def test_every_value_is_documented() -> None:
    """Each key in values.yaml has a comment right above it (except inside free-form resource maps)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented: list[str] = []
    freeform_indent: int | None = None
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        if freeform_indent is not None:
            if indent > freeform_indent:
                continue
            freeform_indent = None
        if m.group(2) == "resources":
            freeform_indent = indent
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#"):
            undocumented.append(f"line {i + 1}: {m.group(2)}")
    assert not undocumented, undocumented


def test_notes_render(helm: Path, tmp_path: Path) -> None:
    """NOTES.txt renders (helm template skips it: render it through tpl in a copy of the chart)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "notes-source.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n'
        '{{ tpl (.Files.Get "notes-source.txt") . | indent 4 }}\n')
    for args in ((), ("--set", "agent.migration.transport=tcp", "--set", "agent.migration.allowInsecureTCP=true")):
        res = run_helm(helm, *args, chart=chart)
        assert res.returncode == 0, res.stderr
        docs = [d for d in yaml.safe_load_all(res.stdout) if d]
        notes = one(docs, "ConfigMap", "notes")["data"]["notes"]
        assert "kubectl apply --server-side -f crds/" in notes
        assert "SR-IOV VFs must already exist" in notes
        assert f"{RELEASE}-failovervm-operator-controller" in notes
        assert ("WARNING" in notes) is bool(args)


def test_storage_grants_and_tcp_destinations_reach_both_components(render: Render) -> None:
    """Issue #14: storageGrants become --storage-grant on the controller and the agents; the agents
    open qemu+tcp:// targets only with allowInsecureTCP."""
    assert "--allow-tcp-migration" not in agent_argv(render())
    docs = render("--set", "storageGrants[0].namespace=*",
                  "--set", "storageGrants[0].path=/var/lib/failovervm/images/cat",
                  "--set", "storageGrants[0].readOnly=true", "--set", "storageGrants[1].namespace=team-a",
                  "--set", "storageGrants[1].path=/var/lib/failovervm/images/shared-a",
                  "--set", "agent.migration.transport=tcp", "--set", "agent.migration.allowInsecureTCP=true")
    for argv in (controller_argv(docs), agent_argv(docs)):
        grants = [argv[i + 1] for i, a in enumerate(argv) if a == "--storage-grant"]
        assert grants == ["*=/var/lib/failovervm/images/cat:ro", "team-a=/var/lib/failovervm/images/shared-a"]
    assert "--allow-tcp-migration" in agent_argv(docs)


def test_tenant_roles_aggregate_into_edit_and_view_without_status(render: Render) -> None:
    """Issue #14: tenants manage their FailoverVMs (and, by default, migrations) through Kubernetes'
    edit/admin roles, read them through view, and never write status (the operator's)."""
    roles = {d["metadata"]["name"]: d for d in render() if d["kind"] == "ClusterRole"
             and "tenant" in d["metadata"]["name"]}
    prefix = f"{RELEASE}-failovervm-operator-tenant"
    edit, view = roles[f"{prefix}-edit"], roles[f"{prefix}-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {r for rule in edit["rules"] for r in rule["resources"]} == {"failovervms", "failovervmmigrations"}
    assert not any("/" in r for role in (edit, view) for rule in role["rules"] for r in rule["resources"])
    no_migrations = [d for d in render("--set", "tenantRoles.migrations=false")
                     if d["metadata"]["name"] == f"{RELEASE}-failovervm-operator-tenant-edit"]
    assert {r for rule in no_migrations[0]["rules"] for r in rule["resources"]} == {"failovervms"}


def test_admission_policies_name_the_chart_identities(render: Render) -> None:
    """Issue #14: the agent's own-node policy applies to the agent's ServiceAccount only and reads the
    node from its token; the evacuation-label policy exempts only the controller's ServiceAccount.
    (Their CEL is exercised on the real API server by tests/e2e/test_helm.py.)"""
    docs = render("--set", "admissionPolicies.enabled=true")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    bindings = {d["spec"]["policyName"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    agent = policies[f"{RELEASE}-failovervm-operator-agent-own-node"]
    evac = policies[f"{RELEASE}-failovervm-operator-controller-evacuation-labels"]
    assert set(bindings) == set(policies) and all(b["spec"]["validationActions"] == ["Deny"] for b in bindings.values())
    sa = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-failovervm-operator"
    assert agent["spec"]["matchConditions"][0]["expression"] == f"request.userInfo.username == '{sa}-agent'"
    assert evac["spec"]["matchConditions"][0]["expression"] == f"request.userInfo.username != '{sa}-controller'"
    assert "authentication.kubernetes.io/node-name" in agent["spec"]["variables"][0]["expression"]
    resources = {r for rule in agent["spec"]["matchConstraints"]["resourceRules"] for r in rule["resources"]}
    assert resources == {"failovervms", "failovervms/status", "failovervmmigrations/status", "nodes/status",
                         "vfinventories"}
    assert all(p["spec"]["failurePolicy"] == "Fail" for p in policies.values())
    assert not [d for d in render("--set", "admissionPolicies.enabled=false")
                if d["kind"].startswith("ValidatingAdmissionPolicy")]


def test_controller_update_strategy_can_be_recreate_or_tuned(render: Render) -> None:
    dep = one(render("--set", "controller.updateStrategy.type=Recreate"), "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    dep = one(render("--set-string", "controller.updateStrategy.rollingUpdate.maxSurge=50%"), "Deployment")
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "50%", "maxUnavailable": 0}
