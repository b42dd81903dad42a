"""Helpers for e2e tests: manifests, waiting on FailoverVM status, looking at libvirt."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Self

import libvirt

from failovervm_sandbox import procs
from tests.conftest import TEST_IMAGES_DIR, Sandbox, wait_for


def halt(namespace: str) -> str:
    """The halt-sector image in the namespace's own image directory (tests.conftest.make_namespace)."""
    return f"{TEST_IMAGES_DIR}/{namespace}/halt.img"


def wait_webhook(port: int, timeout: float = 60) -> None:
    """Wait until a controller started by the test accepts connections on its webhook port."""
    import socket

    def accepts() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(accepts, timeout, what="controller webhook")


def vm_manifest(name: str, namespace: str, pool: str, *, memory: str = "32Mi", running: bool = True,
                **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "failovervm.io/v1alpha1",
        "kind": "FailoverVM",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "running": running, "cpu": 1, "memory": memory,
            "disks": [{"name": "boot", "path": halt(namespace), "readOnly": True, "bootOrder": 1}],
            "network": {"pool": pool},
            "terminationGracePeriodSeconds": 0,
        },
    }
    body["spec"].update(spec)
    return body


def pool_manifest(name: str, bridge: str, node_selector: dict[str, str] | None = None,
                  pfs: tuple[str, ...] = ("sbxpf0", "sbxpf1")) -> dict[str, Any]:
    return {
        "apiVersion": "failovervm.io/v1alpha1",
        "kind": "VFPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": node_selector or {"failovervm.io/sandbox-node": "true"},
            "pfNames": list(pfs),
            "standby": {"type": "bridge", "source": bridge},
        },
    }


def apply(sb: Sandbox, *objs: dict[str, Any]) -> None:
    sb.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def get_vm(sb: Sandbox, namespace: str, name: str) -> dict[str, Any] | None:
    res = sb.kubectl("-n", namespace, "get", "fvm", name, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def condition(vm: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((vm or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def wait_phase(sb: Sandbox, namespace: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        vm = get_vm(sb, namespace, name)
        return vm if vm and (vm.get("status") or {}).get("phase") == phase else None

    return dict(wait_for(check, timeout, what=f"{namespace}/{name} phase {phase}"))


def events(sb: Sandbox, namespace: str, reason: str, name: str | None = None) -> list[dict[str, Any]]:
    """The namespace's Events with `reason` (about object `name`, when given)."""
    return [e for e in sb.kubectl_json("-n", namespace, "get", "events")["items"]
            if e.get("reason") == reason and (name is None or e["involvedObject"]["name"] == name)]


def node_entry(sb: Sandbox, node: str) -> dict[str, Any]:
    return next(n for n in sb.nodes if n["node"] == node)


def libvirt_conn(sb: Sandbox, node: str) -> libvirt.virConnect:
    return libvirt.open(node_entry(sb, node)["uri"])


def domains_on(sb: Sandbox, node: str) -> list[str]:
    conn = libvirt_conn(sb, node)
    try:
        return sorted(d.name() for d in conn.listAllDomains())
    finally:
        conn.close()


def qemu_cmdline(sb: Sandbox, node: str, domain: str) -> str:
    pidfile = Path(node_entry(sb, node)["root"]) / "run_libvirt" / "qemu" / f"{domain}.pid"
    return " ".join(procs.cmdline(int(pidfile.read_text())))


def claims(sb: Sandbox) -> list[dict[str, Any]]:
    return list(sb.kubectl_json("get", "vfclaims")["items"])


class Sampler:
    """Runs `sample()` every `interval` seconds on a thread while its `with` block runs (what a
    user watching would see: phases, where a domain runs)."""

    interval = 0.3

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
