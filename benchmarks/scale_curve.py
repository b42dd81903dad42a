"""The curve of `benchmarks.scale` runs at several sizes: time per VM and CPU per VM by process, as
measured and at the first run's machine speed.

This machine's speed changes between runs by up to 30 to 40 % (benchmarks/README.md, tenth round).
The index of the machine's speed during a phase is the CPU time of the speed probe's fixed round
(`scale.SpeedProbe`, the same work at any N; eleventh round on); for runs without it, the
benchmark's own client threads' CPU per VM (they also do the same work for every VM: build, encode
and send one create over TLS). Every figure of a run is also given multiplied by the first run's
index over its own: what it would have been at the first run's speed. Growth is against the first
run.

  .venv/bin/python -m benchmarks.scale -n 1000 --json > n1000.json
  .venv/bin/python -m benchmarks.scale -n 5000 --json > n5000.json
  .venv/bin/python -m benchmarks.scale_curve n1000.json n5000.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX = "benchmark clients"  # without the probe, the process whose CPU per VM is the machine-speed index
# Kubernetes' own processes in the sandbox: what the operator's requests and pods cost there.
KUBERNETES = ("apiserver", "etcd", "scheduler", "controller_manager")


@dataclass(frozen=True)
class Point:
    """One run's figures per VM (ms), and per plain pod for the raw floor's kube-apiserver."""

    n: int
    time_ms: float
    index_ms: float  # the speed probe's median round, or the benchmark clients' CPU per VM (see probe)
    cpu_ms: Mapping[str, float]
    raw_apiserver_ms: float | None
    raw_index_ms: float | None
    probe: bool = False  # index_ms is the speed probe's


def point(res: Mapping[str, Any]) -> Point:
    """A run (`scale --json`) as a point of the curve. The active controller replica is named
    `controller (active)` and the others `controller (standby)`, whatever their sandbox names."""
    op, raw = res["operator"], res.get("raw") or {}
    cpu = dict(op.get("cpu_ms_per_vm") or {})
    active = op.get("controller_cpu_ms_per_vm")
    replicas = {k: v for k, v in cpu.items() if k == "controller" or k.startswith("controller-")}
    if replicas and active is not None:
        name = min(replicas, key=lambda k: abs(replicas[k] - active))
        for k in replicas:
            cpu.pop(k)
        cpu["controller (active)"] = replicas[name]
        others = sum(v for k, v in replicas.items() if k != name)
        if len(replicas) > 1:
            cpu["controller (standby)"] = others
    raw_cpu = raw.get("cpu_ms_per_pod") or {}
    probe = bool(op.get("speed_probe_ms") and raw.get("speed_probe_ms"))
    index, raw_index = (op["speed_probe_ms"], raw["speed_probe_ms"]) if probe else (cpu.get(INDEX), raw_cpu.get(INDEX))
    if not index:
        raise SystemExit(f"the run with N = {res['n']} has no CPU time of the {INDEX} (a scale run before the "
                         "tenth round?)")
    return Point(n=int(res["n"]), time_ms=float(op["per_vm_ms"]), index_ms=float(index), cpu_ms=cpu,
                 raw_apiserver_ms=raw_cpu.get("apiserver"), raw_index_ms=raw_index, probe=probe)


def is_kubernetes(name: str) -> bool:
    return name in KUBERNETES


def is_operator(name: str) -> bool:
    return name.startswith("controller (")


def cpu_of(p: Point, group: Callable[[str], bool]) -> float:
    """The CPU per VM of a run's processes in `group`, as measured."""
    return sum(v for k, v in p.cpu_ms.items() if group(k))


def at_speed(value: float, p: Point, ref: Point) -> float:
    """`value`, measured in run p, at the reference run's machine speed."""
    return value * ref.index_ms / p.index_ms


def growth(value: float, ref_value: float) -> str:
    return "-" if not ref_value else f"{(value / ref_value - 1) * 100:+.0f} %"


def rows(points: Sequence[Point]) -> list[list[str]]:
    """The curve as table rows (first row the header): per run, its time per VM and the index, as
    measured and at the first run's speed, with their growth; then each process's CPU per VM at the
    first run's speed (Kubernetes' processes and the operator's together, then each process, the
    largest first); then kube-apiserver's CPU per plain pod of the raw floor."""
    ref = points[0]
    if len({p.probe for p in points}) > 1:
        raise SystemExit("some runs have the speed probe and some not: compare runs of one kind")
    table = [["", *(f"N = {p.n:,}" for p in points)]]

    def line(label: str, values: list[float | None], ref_value: float | None, unit: str = "ms") -> None:
        cells = []
        for v in values:
            if v is None:
                cells.append("-")
            elif ref_value is None or v is values[0]:
                cells.append(f"{v:.2f} {unit}")
            else:
                cells.append(f"{v:.2f} {unit} ({growth(v, ref_value)})")
        table.append([label, *cells])

    line("time per VM, as measured", [p.time_ms for p in points], ref.time_ms)
    index = "the speed probe's round, CPU" if ref.probe else f"{INDEX}' CPU per VM"
    line(f"machine-speed index ({index})", [p.index_ms for p in points], ref.index_ms)
    line("time per VM at the first run's speed", [at_speed(p.time_ms, p, ref) for p in points], ref.time_ms)
    # On saturated cores the time per VM is all processes' CPU per VM over the cores: what it would be
    # had the operator's replicas taken the same CPU per VM as in the first run (the rest as measured).
    def operator_flat(p: Point) -> float:
        total = at_speed(sum(p.cpu_ms.values()), p, ref)
        return at_speed(p.time_ms, p, ref) * (total - at_speed(cpu_of(p, is_operator), p, ref)
                                              + cpu_of(ref, is_operator)) / total

    line("  the same, had the operator's CPU per VM not grown", [operator_flat(p) for p in points], ref.time_ms)
    line("CPU per VM, all processes, at that speed",
         [at_speed(sum(p.cpu_ms.values()), p, ref) for p in points], sum(ref.cpu_ms.values()))
    for label, group in (("  Kubernetes (kube-apiserver, etcd, kube-scheduler, kube-controller-manager)",
                          is_kubernetes), ("  the operator (controller replicas)", is_operator)):
        line(label, [at_speed(cpu_of(p, group), p, ref) for p in points], cpu_of(ref, group))
    names = sorted({k for p in points for k in p.cpu_ms}, key=lambda k: -max(p.cpu_ms.get(k, 0.0) for p in points))
    for name in names:
        if (name == INDEX and not ref.probe) or max(p.cpu_ms.get(name, 0.0) for p in points) < 0.05:
            continue
        line(f"    {name}", [at_speed(p.cpu_ms.get(name, 0.0), p, ref) for p in points], ref.cpu_ms.get(name, 0.0))
    raws = [(p.raw_apiserver_ms, p.raw_index_ms) for p in points]
    if all(ms and index for ms, index in raws):
        ref_ms, ref_index = raws[0]
        line("raw floor: kube-apiserver's CPU per plain pod, at the first raw phase's speed",
             [ms * ref_index / index for ms, index in raws], ref_ms)  # type: ignore[operator]
    return table


def render(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in table)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="the JSON of `benchmarks.scale --json`, the reference first")
    args = ap.parse_args(argv)
    print(render(rows([point(json.loads(f.read_text())) for f in args.runs])))


if __name__ == "__main__":
    main()
