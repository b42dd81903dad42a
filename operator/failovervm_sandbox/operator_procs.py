"""Running the operator (controller + one agent per node) as local processes on the sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failovervm import labels
from failovervm_sandbox import binaries, controlplane, procs
from failovervm_sandbox.state import ensure_component

if TYPE_CHECKING:
    from failovervm_sandbox.state import Options, State


def _apply_crds(state: State) -> None:
    crds = binaries.repo_root() / "crds"
    subprocess.run(
        [str(binaries.kubectl()), "--kubeconfig", str(state.kubeconfig), "apply", "--server-side",
         "--force-conflicts", "-f", str(crds)],
        check=True, stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [str(binaries.kubectl()), "--kubeconfig", str(state.kubeconfig), "wait", "--for=condition=Established",
         "--timeout=60s", "-f", str(crds)],
        check=True, stdout=subprocess.DEVNULL,
    )


NAMESPACE = "failovervm-system"
PEERING = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": labels.PEERING_NAME}}


def _apply_peering(state: State) -> None:
    import json

    subprocess.run(
        [str(binaries.kubectl()), "--kubeconfig", str(state.kubeconfig), "apply", "-f", "-"],
        input=json.dumps(PEERING), text=True, check=True, stdout=subprocess.DEVNULL,
    )


WEBHOOK_CONFIG = "failovervm-operator"
CONTROLLER_REPLICAS = 2


def controller_key(i: int) -> str:
    """The state key (and log name) of controller replica `i`: controller, controller-2, ..."""
    return "controller" if i == 0 else f"controller-{i + 1}"


def webhook_configuration(port: int, ca_pem: bytes, namespace: str) -> dict[str, Any]:
    """The same two webhooks the Helm chart registers, pointing at the local controller."""
    import base64

    def hook(name: str, path: str, rule: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "name": name, "admissionReviewVersions": ["v1"], "timeoutSeconds": 10, "matchPolicy": "Equivalent",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/{path}",
                             "caBundle": base64.b64encode(ca_pem).decode()},
            "rules": [rule], **extra,
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [
            hook(f"failovervm-validate.{labels.PREFIX}", "failovervm-validate",
                 {"apiGroups": [labels.API_GROUP], "apiVersions": [labels.API_VERSION],
                  "operations": ["CREATE", "UPDATE"], "resources": ["failovervms"], "scope": "Namespaced"},
                 failurePolicy="Fail", sideEffects="None",
                 matchConditions=[{"name": "spec-changes", "expression": labels.VALIDATE_SPEC_CHANGES}]),
            hook(f"vm-pod-eviction.{labels.PREFIX}", "vm-pod-eviction",
                 {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                  "resources": ["pods/eviction"], "scope": "Namespaced"},
                 failurePolicy="Fail", sideEffects="NoneOnDryRun",
                 namespaceSelector={"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                                          "values": ["kube-system"]}]},
                 matchConditions=[{"name": "vm-pods-only", "expression": "request.name.startsWith('fvm-')"}]),
        ],
    }


def _wait_port(port: int, timeout: float, what: str, log: Path) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:port."""
    import socket
    import time

    from failovervm_sandbox import SandboxError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SandboxError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f}s; see {log}")


def ensure(state: State, opts: Options) -> None:

    d = state.data
    _apply_crds(state)
    _apply_peering(state)
    subprocess.run([str(binaries.kubectl()), "--kubeconfig", str(state.kubeconfig), "create", "namespace",
                    NAMESPACE], check=False, capture_output=True)
    logs = state.cp_paths.logs
    op = d.setdefault("operator", {})
    op.setdefault("webhook_port", controlplane.free_port())
    op.setdefault("controller_metrics_port", controlplane.free_port())
    kc = str(state.kubeconfig)
    import json

    from failovervm import webhookcerts

    cert_dir = state.dir / "pki" / "webhook"
    ca, _, _ = webhookcerts.ensure(cert_dir, "127.0.0.1")
    subprocess.run(
        [str(binaries.kubectl()), "--kubeconfig", kc, "apply", "-f", "-"],
        input=json.dumps(webhook_configuration(op["webhook_port"], ca.read_bytes(), NAMESPACE)), text=True,
        check=True, stdout=subprocess.DEVNULL,
    )
    # An older sandbox's Kopf-managed configuration, named after the API group (controller.main).
    subprocess.run([str(binaries.kubectl()), "--kubeconfig", kc, "delete", "validatingwebhookconfiguration",
                    labels.API_GROUP, "--ignore-not-found"], check=False, capture_output=True)
    # Two controller replicas, as the chart installs them: the first one started is active (Kopf
    # peering), the other stands by, and both answer the webhooks behind the Service stand-in.
    backends_file = state.dir / "webhook-backends"
    ports = []
    for i in range(CONTROLLER_REPLICAS):
        key = controller_key(i)
        if i:
            op.setdefault(f"{key}_metrics_port", controlplane.free_port())
        port = op.setdefault(f"{key}_webhook_port", controlplane.free_port())
        ports.append(port)
        argv = [
            sys.executable, "-m", "failovervm.cli", "controller", "--kubeconfig", kc,
            "--storage-root", d["images_dir"],
            "--webhook-host", "127.0.0.1", "--webhook-port", str(port),
            "--webhook-cert-dir", str(cert_dir), "--webhook-unmanaged", "--namespace", NAMESPACE,
            "--metrics-port", str(op["controller_metrics_port"] if not i else op[f"{key}_metrics_port"]),
        ]
        ensure_component(state, key, "controller",
                         lambda a=argv, k=key: procs.spawn(  # type: ignore[misc]
                             a, logs / f"{k}.log", env={**os.environ, "POD_ID": k}),
                         opts, f"operator {key}")
    backends_file.write_text("".join(f"{p}\n" for p in ports))
    proxy_argv = [sys.executable, "-m", "failovervm_sandbox.webhookproxy", "--listen", str(op["webhook_port"]),
                  "--backends", str(backends_file)]
    ensure_component(state, "webhook-proxy", "webhookproxy",
                     lambda: procs.spawn(proxy_argv, logs / "webhook-proxy.log"), opts, "webhook Service stand-in")
    for i, port in enumerate(ports):
        _wait_port(port, 60, f"{controller_key(i)}'s admission webhook", logs / f"{controller_key(i)}.log")
    for host in state.data["libvirt"]:
        key = f"agent-{host['index']}"
        if host["node"] in state.data.get("down_nodes", []):
            continue  # `sandbox node-down`: its machine is off
        op.setdefault(f"{key}_metrics_port", controlplane.free_port())
        agent_argv = [
            sys.executable, "-m", "failovervm.cli", "agent", "--kubeconfig", kc, "--node", host["node"],
            "--libvirt-uri", host["uri"], "--sysfs-root", host["sysfs_root"],
            "--storage-root", d["images_dir"], "--metrics-port", str(op[f"{key}_metrics_port"]),
            "--serial-log-dir", str(state.dir / "console"),
            # The sandbox's libvirt daemons listen on qemu+tcp:// (loopback addresses only).
            "--allow-tcp-migration",
        ]
        ensure_component(
            state, key, "agent",
            lambda a=agent_argv, n=host["node"]: procs.spawn(a, logs / f"agent-{n}.log"),  # type: ignore[misc]
            opts, f"operator agent {host['node']}",
        )


def stop(state: State) -> None:
    for key in [*(k for k in state.data if k.startswith("agent-")), *_controller_keys(state), "webhook-proxy"]:
        procs.stop(state.data.get(key, {}).get("pid"), _marker(key))


def _controller_keys(state: State) -> list[str]:
    return [k for k in state.data if k == "controller" or k.startswith("controller-")]


def _marker(key: str) -> str:
    return "webhookproxy" if key == "webhook-proxy" else key.split("-")[0]


def status_rows(state: State) -> list[dict[str, Any]]:
    rows = []
    for key in [*_controller_keys(state), "webhook-proxy", *sorted(k for k in state.data if k.startswith("agent-"))]:
        pid = state.data.get(key, {}).get("pid")
        if pid is None:
            continue
        running = procs.alive(pid, _marker(key))
        rows.append({"component": f"operator {key}", "pid": pid, "running": running, "ok": running,
                     "rss_mib": round(procs.rss_kib(pid) / 1024, 1) if running else 0, "detail": ""})
    return rows
