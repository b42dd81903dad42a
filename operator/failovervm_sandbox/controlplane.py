"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler for the sandbox, bound to loopback."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from failovervm import pki
from failovervm_sandbox import SandboxError, procs

SERVICE_CIDR = "10.96.0.0/24"
SERVICE_IP = "10.96.0.1"


# Ports the sandbox's servers listen on are chosen below the kernel's ephemeral range (32768-60999
# by default): a port taken from that range (bind to port 0) is free when chosen but may be taken by
# any outgoing connection (kubectl, the apiserver's clients) before the server that it was chosen
# for binds it, and that server then fails with "address already in use".
LISTEN_PORTS = (20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    import secrets

    low, high = LISTEN_PORTS
    for _ in range(200):
        port = low + secrets.randbelow(high - low)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range is full: let the kernel choose
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ControlPlanePaths:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def kcm_kubeconfig(self) -> Path:
        return self.root / "pki" / "kube-controller-manager.kubeconfig"

    @property
    def scheduler_kubeconfig(self) -> Path:
        return self.root / "pki" / "kube-scheduler.kubeconfig"

    @property
    def scheduler_config(self) -> Path:
        return self.root / "kube-scheduler.yaml"


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "failovervm-sandbox", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "failovervm-sandbox", "context": {"cluster": "failovervm-sandbox", "user": user}}],
        "current-context": "failovervm-sandbox",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)


def generate_pki(paths: ControlPlanePaths) -> None:
    """Create the CA, serving and client certificates and ServiceAccount keys (once)."""
    d = paths.pki
    d.mkdir(parents=True, exist_ok=True)
    if (d / "ca.crt").exists() and (d / "sa.key").exists() and (d / "admin.crt").exists():
        return
    ca = pki.make_ca(d, "ca", "failovervm-sandbox-ca")
    pki.issue(
        ca, d, "apiserver", "kube-apiserver", server=True,
        dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local"),
        ip_addresses=("127.0.0.1", SERVICE_IP),
    )
    pki.issue(ca, d, "admin", "sandbox-admin", org="system:masters", client=True)
    pki.issue(ca, d, "kube-controller-manager", "system:kube-controller-manager", client=True)
    _make_service_account_keys(d)


def generate_scheduler_pki(paths: ControlPlanePaths) -> None:
    """kube-scheduler's client certificate and its serving certificate (once; also for a sandbox
    whose CA was made before the sandbox ran kube-scheduler).

    The client identity is the user `system:kube-scheduler`, which the apiserver's bootstrap RBAC
    binds to the ClusterRoles system:kube-scheduler and system:volume-scheduler (and, in
    kube-system, to the Role that reads extension-apiserver-authentication). No group and no
    binding of our own: it gets exactly what a kubeadm-installed kube-scheduler gets."""
    d = paths.pki
    if (d / "kube-scheduler.crt").exists() and (d / "kube-scheduler-serving.crt").exists():
        return
    ca = pki.KeyPair(d / "ca.crt", d / "ca.key")
    pki.issue(ca, d, "kube-scheduler", SCHEDULER_USER, client=True)
    pki.issue(ca, d, "kube-scheduler-serving", "kube-scheduler", server=True,
              dns_names=("localhost",), ip_addresses=("127.0.0.1",))


def _make_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """RSA key pair that signs ServiceAccount tokens (private, public)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = directory / "sa.key", directory / "sa.pub"
    pki.write_key(priv, key)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def _ssl_context(paths: ControlPlanePaths) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
    ctx.load_cert_chain(str(paths.pki / "admin.crt"), str(paths.pki / "admin.key"))
    return ctx


def wait_http(url: str, timeout: float, ctx: ssl.SSLContext | None = None, what: str = "",
              pid: int | None = None, log: Path | None = None) -> None:
    """Return once `url` answers 200; fail early when process `pid` (if given) has exited."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if pid is not None and not procs.alive(pid):
            raise SandboxError(f"{what or url} exited while starting; see {log or 'its log'}")
        try:
            with urllib.request.urlopen(url, timeout=3, context=ctx) as resp:  # noqa: S310 - loopback URL we built
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise SandboxError(f"{what or url} did not become ready within {timeout:.0f}s: {last}")


def start_etcd(binary: Path, paths: ControlPlanePaths, client_port: int, peer_port: int) -> int:
    paths.etcd_data.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "--name=sandbox",
        f"--data-dir={paths.etcd_data}",
        f"--listen-client-urls=http://127.0.0.1:{client_port}",
        f"--advertise-client-urls=http://127.0.0.1:{client_port}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=sandbox=http://127.0.0.1:{peer_port}",
        "--listen-metrics-urls=",
        "--quota-backend-bytes=2147483648",
        "--unsafe-no-fsync",  # a throwaway sandbox: trade durability for speed on slow disks
        "--log-level=warn",
    ]
    pid = procs.spawn(argv, paths.logs / "etcd.log")
    wait_http(f"http://127.0.0.1:{client_port}/health", 30, what="etcd")
    return pid


def start_apiserver(binary: Path, paths: ControlPlanePaths, port: int, etcd_port: int,
                    profiling: bool = False) -> int:
    """kube-apiserver; `profiling` serves /debug/pprof (to system:masters: the admin credentials)."""
    d = paths.pki
    argv = [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={d / 'apiserver.crt'}",
        f"--tls-private-key-file={d / 'apiserver.key'}",
        f"--client-ca-file={d / 'ca.crt'}",
        f"--service-account-key-file={d / 'sa.pub'}",
        f"--service-account-signing-key-file={d / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=RBAC",
        "--anonymous-auth=false",
        "--allow-privileged=true",
        "--enable-admission-plugins=NodeRestriction",
        f"--profiling={str(profiling).lower()}",
        "--endpoint-reconciler-type=none",
        "--v=1",
    ]
    pid = procs.spawn(argv, paths.logs / "kube-apiserver.log")
    wait_http(f"https://127.0.0.1:{port}/readyz", 120, _ssl_context(paths), what="kube-apiserver")
    return pid


KCM_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "node-lifecycle-controller",
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "job-controller",
    "ttl-after-finished-controller",
    # Keeps each ResourceQuota's status (hard and used): the API server's quota admission only
    # enforces what that status lists, so without it every quota admits everything.
    "resourcequota-controller",
)


def start_controller_manager(binary: Path, paths: ControlPlanePaths, server: str) -> int:
    d = paths.pki
    write_kubeconfig(
        paths.kcm_kubeconfig, server, d / "ca.crt", d / "kube-controller-manager.crt",
        d / "kube-controller-manager.key", "system:kube-controller-manager",
    )
    kc = str(paths.kcm_kubeconfig)
    argv = [
        str(binary),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={d / 'sa.key'}",
        f"--root-ca-file={d / 'ca.crt'}",
        # Only what the sandbox relies on: owner-reference GC, namespace deletion, default
        # ServiceAccounts, node health, RBAC aggregation, the workload controllers the
        # Helm chart's objects use, and ResourceQuota status (VM pods count against quotas).
        # No cloud or volume controllers: nothing backs them here.
        "--controllers=" + ",".join(KCM_CONTROLLERS),
        "--v=1",
    ]
    return procs.spawn(argv, paths.logs / "kube-controller-manager.log")


SCHEDULER_USER = "system:kube-scheduler"


def scheduler_configuration(kubeconfig: Path) -> dict[str, Any]:
    """The KubeSchedulerConfiguration: the default profile, client credentials from `kubeconfig`,
    leader election off (one instance, as the sandbox's kube-controller-manager; see
    docs/sandbox.md)."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": False},
        "profiles": [{"schedulerName": "default-scheduler"}],
    }


def scheduler_ssl_context(paths: ControlPlanePaths) -> ssl.SSLContext:
    """Verifies kube-scheduler's serving certificate; no client certificate (its health endpoints
    are open to anonymous requests, everything else needs an authorized identity)."""
    return ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))


def start_scheduler(binary: Path, paths: ControlPlanePaths, server: str, port: int) -> int:
    """kube-scheduler on 127.0.0.1:`port` (HTTPS only, certificate from the sandbox CA), under its
    own client certificate; returns once its /readyz answers ok."""
    d = paths.pki
    generate_scheduler_pki(paths)
    write_kubeconfig(
        paths.scheduler_kubeconfig, server, d / "ca.crt", d / "kube-scheduler.crt", d / "kube-scheduler.key",
        SCHEDULER_USER,
    )
    paths.scheduler_config.write_text(
        yaml.safe_dump(scheduler_configuration(paths.scheduler_kubeconfig), sort_keys=False))
    kc = str(paths.scheduler_kubeconfig)
    argv = [
        str(binary),
        f"--config={paths.scheduler_config}",
        # Delegated authentication (TokenReview) and authorization (SubjectAccessReview) of its HTTPS
        # endpoints, as kubeadm runs it. Client certificates are checked against the sandbox CA
        # given here instead of looked up in kube-system/extension-apiserver-authentication, which
        # has no request-header CA (no aggregation layer here) and would be reported as an error
        # every few seconds.
        f"--authentication-kubeconfig={kc}",
        "--authentication-skip-lookup=true",
        f"--client-ca-file={d / 'ca.crt'}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={d / 'kube-scheduler-serving.crt'}",
        f"--tls-private-key-file={d / 'kube-scheduler-serving.key'}",
        "--v=1",
    ]
    log = paths.logs / "kube-scheduler.log"
    pid = procs.spawn(argv, log)
    wait_http(f"https://127.0.0.1:{port}/readyz", 60, scheduler_ssl_context(paths), what="kube-scheduler",
              pid=pid, log=log)
    return pid


def scheduler_ready(paths: ControlPlanePaths, port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/readyz", timeout=3, context=scheduler_ssl_context(paths)
        ) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def apiserver_version(paths: ControlPlanePaths, port: int) -> str:
    with urllib.request.urlopen(
        f"https://127.0.0.1:{port}/version", timeout=5, context=_ssl_context(paths)
    ) as resp:
        return str(json.load(resp)["gitVersion"])


def apiserver_ready(paths: ControlPlanePaths, port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/readyz", timeout=3, context=_ssl_context(paths)
        ) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False
