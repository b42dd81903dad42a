"""Shared helpers for the benchmarks: sandbox access, percentiles, output."""

from __future__ import annotations

import json
import math
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client, config


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[k]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": statistics.fmean(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


class SandboxHandle:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.data: dict[str, Any] = json.loads((state_dir / "sandbox.json").read_text())
        self.kubeconfig = state_dir / "kubeconfig"
        api = client.ApiClient(config.new_client_from_config(config_file=str(self.kubeconfig)).configuration)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def uri(self, node: str) -> str:
        return str(next(h["uri"] for h in self.data["libvirt"] if h["node"] == node))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"cpu": cpu, "cores": len([1 for _ in range(1)]) and __import__("os").cpu_count(),
            "kernel": platform.release(), "qemu": qemu}
