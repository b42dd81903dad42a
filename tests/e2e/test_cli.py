"""The failovervm CLI / kubectl plugin and the Prometheus endpoints, on the sandbox (issue #5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, Sandbox, controller_keys, make_namespace, wait_for
from tests.e2e.helpers import apply, get_vm, pool_manifest, vm_manifest, wait_phase

pytestmark = pytest.mark.e2e
POOL = "cli-pool"


def _cli(sb: Sandbox, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "failovervm.cli", *args, "--kubeconfig", str(sb.kubeconfig)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_status_evacuate_console_and_metrics(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "cli")
    node = sb.nodes[1]["node"]
    apply(sb, pool_manifest(POOL, sb.data["bridge"]),
          *(vm_manifest(f"c{i}", ns, POOL, nodeSelector={"kubernetes.io/hostname": node}) for i in range(2)))
    for i in range(2):
        wait_phase(sb, ns, f"c{i}", "Running")
    # The VMs must be able to leave: drop the node pinning (spec change applies to placement only).
    for i in range(2):
        sb.kubectl("-n", ns, "patch", "fvm", f"c{i}", "--type=json",
                   "-p", '[{"op":"remove","path":"/spec/nodeSelector"}]')

    status = json.loads(_cli(sb, "status", "-A", "-o", "json").stdout)
    assert {v["name"] for v in status["vms"] if v["namespace"] == ns} == {"c0", "c1"}
    table = _cli(sb, "status", "-n", ns).stdout
    assert "c0" in table and node in table and POOL in table

    # The same entry point as a kubectl plugin.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    plugin = subprocess.run(["kubectl", "failovervm", "status", "-n", ns, "--kubeconfig", str(sb.kubeconfig)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert plugin.returncode == 0 and "c0" in plugin.stdout, plugin.stderr

    console = _cli(sb, "console", "c0", "-n", ns, "--state-dir", str(sb.state_dir))
    assert console.returncode == 0, console.stderr

    res = _cli(sb, "evacuate", node, "--watch", "--timeout", "180")
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        assert "cordoned" in res.stdout + res.stderr
        for i in range(2):
            assert get_vm(sb, ns, f"c{i}")["status"]["nodeName"] != node
    finally:
        sb.kubectl("uncordon", node)

    ops = sb.data["operator"]
    agent_idx = next(n["index"] for n in sb.nodes if n["node"] == node)
    agent_metrics = _metrics(ops[f"agent-{agent_idx}_metrics_port"])
    assert f'failovervm_migrations_total{{node="{node}",result="succeeded"}}' in agent_metrics
    assert "failovervm_migration_downtime_milliseconds_bucket" in agent_metrics
    assert f'failovervm_libvirt_connected{{node="{node}"}} 1.0' in agent_metrics
    ports = [ops["controller_metrics_port" if k == "controller" else f"{k}_metrics_port"] for k in controller_keys(sb)]
    wait_for(lambda: any(f'pool="{POOL}"' in _metrics(p) for p in ports), 30, what="pool gauges (the active replica's)")
    sb.kubectl("delete", "namespace", ns, "--timeout=120s")
