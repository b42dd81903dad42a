"""Every benchmark runs in a small, quick mode here so it cannot rot. Figures are not asserted:
speed is measured by the benchmarks themselves (benchmarks/README.md)."""

from __future__ import annotations

import math

import pytest

from tests.conftest import Sandbox
from tests.e2e.helpers import apply, pool_manifest

pytestmark = pytest.mark.e2e


def test_apply_to_running_benchmark_quick(operator_sandbox: Sandbox) -> None:
    from benchmarks import apply_to_running

    apply(operator_sandbox, pool_manifest(apply_to_running.POOL, operator_sandbox.data["bridge"]))
    res = apply_to_running.run(operator_sandbox.state_dir, n=3, namespace="bench-quick")
    assert res["operator_s"]["n"] == 3 and res["raw_libvirt_s"]["n"] == 3
    assert math.isfinite(res["ratio_p50"]) and res["ratio_p50"] > 0
    operator_sandbox.kubectl("delete", "namespace", "bench-quick", "--wait=false")


def test_scheduler_binding_benchmark_quick(operator_sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import apply_to_running, scheduler_binding

    apply(operator_sandbox, pool_manifest(apply_to_running.POOL, operator_sandbox.data["bridge"]))
    res = scheduler_binding.run(operator_sandbox.state_dir, n=2, namespace="bench-binding-quick")
    assert res["vm_pod_watch_s"]["n"] == 2 and res["plain_pod_watch_s"]["n"] == 2
    scheduler_binding._report(res)
    out = capsys.readouterr().out
    assert "VM pod" in out and "plain pod" in out and "kube-scheduler's own" in out
    operator_sandbox.kubectl("delete", "namespace", "bench-binding-quick", "--wait=false")


def test_evacuation_benchmark_quick(operator_sandbox: Sandbox) -> None:
    from benchmarks import evacuation

    res = evacuation.run(operator_sandbox.state_dir, n=3, namespace="bench-evac-quick", raw_rounds=1)
    assert res["downtime_ms"]["n"] == 3
    assert res["evacuation_s"] > 0 and math.isfinite(res["ratio_to_ideal"])


def test_guest_migration_benchmark_quick(operator_sandbox: Sandbox) -> None:
    from benchmarks import guest_migration

    res = guest_migration.run(operator_sandbox.state_dir, rounds=1, namespace="bench-guest-quick")
    linux, halt = res["guests"]["linux"], res["guests"]["halt"]
    assert linux["failover_ready_after"] == "True" and halt["failover_ready_after"] == "False"
    for g in (linux, halt):
        assert g["operator_wall_s"]["n"] == 1 and g["raw_wall_s"]["n"] == 1
        assert math.isfinite(g["ratio_wall_p50"]) and g["ratio_wall_p50"] > 0


def test_migration_policies_benchmark_quick(operator_sandbox: Sandbox) -> None:
    from benchmarks import migration_policies

    res = migration_policies.run(operator_sandbox.state_dir, rounds=1, namespace="bench-policies-quick",
                                 scenarios=("post-copy",))
    post_copy = res["scenarios"]["post-copy"]
    for who in ("operator", "raw"):
        [one] = post_copy[who]
        assert one["converged"] and one["post_copy"] and one["wall_s"] > 0 and one["standby_s"] > 0, one


def test_node_recovery_benchmark_quick(operator_sandbox: Sandbox) -> None:
    from benchmarks import node_recovery

    res = node_recovery.run(operator_sandbox.state_dir, n=2, namespace="bench-recovery-quick")
    assert res["operator_per_vm_s"]["n"] == 2
    assert res["raw_define_start_s"] > 0 and math.isfinite(res["ratio"]) and res["ratio"] > 0
    operator_sandbox.data = Sandbox(operator_sandbox.state_dir).data  # node-up may have restarted processes


def test_scale_benchmark_quick(operator_sandbox: Sandbox) -> None:
    """benchmarks/scale.py on 4 agent-less nodes (`sandbox up --virtual-nodes 4`), removed again after."""
    from benchmarks import scale

    from tests.conftest import _cli, _up_args

    res = _cli(*_up_args(operator_sandbox.state_dir), "--virtual-nodes", "4")
    assert res.returncode == 0, res.stderr
    try:
        out = scale.run(operator_sandbox.state_dir, n=12, namespace="bench-scale-quick", clients=4)
        assert out["operator"]["placed"] == 12 and out["raw"]["all_bound_s"] > 0
        assert math.isfinite(out["ratio_all_placed"]) and out["requests"]["per_vm"] > 0
        assert out["rss_mib"]["controller"]
        # Where the CPU went (every sandbox process, per VM and per plain pod), the controller's
        # garbage collector, and the mean create in the API server with its webhook call.
        cpu = out["operator"]["cpu_ms_per_vm"]
        assert cpu.get("apiserver", 0) > 0 and cpu.get("etcd", 0) > 0, cpu
        assert any(k.startswith("controller") and v > 0 for k, v in cpu.items()), cpu
        assert out["raw"]["cpu_ms_per_pod"].get("scheduler", 0) > 0, out["raw"]["cpu_ms_per_pod"]
        assert set(out["operator"].get("controller_gc_ms_per_vm") or {}) == {"0", "1", "2"}, out["operator"]
        assert out["operator"]["create_ms"] > 0 and out["operator"]["webhook_ms"] > 0 and out["raw"]["create_ms"] > 0
        scale._report(out)
    finally:
        res = _cli(*_up_args(operator_sandbox.state_dir), "--virtual-nodes", "0")
        operator_sandbox.data = Sandbox(operator_sandbox.state_dir).data
    assert res.returncode == 0, res.stderr
    assert not operator_sandbox.kubectl_json("get", "nodes", "-l", "failovervm.io/sandbox-virtual-node")["items"]
