"""The sandbox's options and its on-disk record of what `up` started (sandbox.json), shared by the
manager and the component starters (operator_procs)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failovervm.labels import SANDBOX_STATE_DIR
from failovervm_sandbox import controlplane, libvirthost, procs
from failovervm_sandbox.nodes import SandboxNode, migration_address

DEFAULT_STATE_DIR = Path(SANDBOX_STATE_DIR)
DEFAULT_IMAGES_DIR = DEFAULT_STATE_DIR / "images"
STATE_FILE = "sandbox.json"


@dataclass
class Options:
    state_dir: Path = DEFAULT_STATE_DIR
    images_dir: Path = DEFAULT_IMAGES_DIR
    nodes: int | None = None  # None: the existing sandbox's value, else 2
    vfs_per_node: int | None = None  # None: existing, else 8
    pfs_per_node: int | None = None  # None: existing, else 1
    virtual_nodes: int | None = None  # agent-less nodes (virtualnodes.py); None: existing, else 0
    address_base: str = "127.0.0.10"
    node_cpu: str = "16"
    node_memory: str = "16Gi"
    bridge: str = "fvmsbr0"
    operator: bool = True
    profiling: bool = False  # kube-apiserver --profiling (benchmarks' --pprof)
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def say(opts: Options, msg: str) -> None:
    if not opts.quiet:
        print(f"[sandbox {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def node_name(i: int) -> str:
    return f"sandbox-node-{i}"


class State:
    """The JSON record of what `up` started."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_FILE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.path)

    @property
    def cp_paths(self) -> controlplane.ControlPlanePaths:
        return controlplane.ControlPlanePaths(self.dir)

    def hosts(self) -> list[libvirthost.LibvirtHost]:
        return [
            libvirthost.LibvirtHost(h["index"], h["address"], Path(h["root"]))
            for h in self.data.get("libvirt", [])
        ]

    def sandbox_nodes(self) -> list[SandboxNode]:
        return [
            SandboxNode(
                name=h["node"], address=h["address"], libvirt_uri=h["uri"], sysfs_root=h["sysfs_root"],
                accel=self.data["accel"], cpu=self.data["node_cpu"], memory=self.data["node_memory"],
                migration_address=migration_address(h["address"]),
            )
            for h in self.data.get("libvirt", [])
        ]

    def virtual_nodes(self) -> list[SandboxNode]:
        """The agent-less nodes of `sandbox up --virtual-nodes` (failovervm_sandbox.virtualnodes)."""
        from failovervm_sandbox import virtualnodes

        return virtualnodes.sandbox_nodes(self.dir, int(self.data.get("virtual_nodes") or 0),
                                          self.data.get("accel", "tcg"))

    @property
    def kubeconfig(self) -> Path:
        return self.cp_paths.admin_kubeconfig


def ensure_component(
    state: State, key: str, marker: str, start: Callable[[], int], opts: Options, label: str
) -> None:
    """Start a component unless the PID recorded under `key` still runs `marker`."""
    entry = state.data.setdefault(key, {})
    if procs.alive(entry.get("pid"), marker):
        say(opts, f"{label}: already running (pid {entry['pid']})")
        return
    t0 = time.monotonic()
    entry["pid"] = start()
    state.save()
    say(opts, f"{label}: started (pid {entry['pid']}) in {time.monotonic() - t0:.1f}s")
