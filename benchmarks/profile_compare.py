"""Compare two profiles per VM: a controller replica's (`benchmarks.scale --py-spy`) or
kube-apiserver's (`benchmarks.scale --pprof`).

`scale --py-spy` writes each replica's collapsed stacks (py-spy's raw format, sampled while the
replica holds the GIL, 50 samples/s) over the VM phase of a run with N VMs; `scale --pprof`
writes kube-apiserver's Go CPU profile (100 samples/s) in 10 s windows, several files per phase,
read here with `go tool pprof -traces` (a shell pattern in quotes takes all the windows of a
phase). This prints, in ms per VM, the whole profile and each function's own (self) and inclusive
time at both sizes, the functions whose time per VM grew most first: where a process's cost per
VM changes with N.

  .venv/bin/python -m benchmarks.profile_compare py-spy-controller-1000.txt 1000 \\
      py-spy-controller-5000.txt 5000
  .venv/bin/python -m benchmarks.profile_compare 'pprof-apiserver-operator-1000-*' 1000 \\
      'pprof-apiserver-operator-5000-*' 5000
"""

from __future__ import annotations

import argparse
import glob
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RATE = 50  # samples per second (benchmarks.scale.PySpy samples at this rate)
GO_RATE = 100  # Go's CPU profiler (runtime/pprof) samples at this rate
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass
class Profile:
    """Sample counts of one collapsed-stacks file: in all, by leaf function, by any function on
    the stack (each counted once per stack). Functions are named without their line number."""

    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Profile:
        prof = cls()
        for line in text.splitlines():
            stack, _, count = line.strip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            prof.add([re.sub(r":\d+\)$", ")", f) for f in stack.split(";")], int(count))
        return prof

    def add(self, frames: list[str], n: int) -> None:
        """A stack (root first, leaf last) sampled n times."""
        self.samples += n
        self.own[frames[-1]] += n
        for f in set(frames):
            self.inclusive[f] += n

    @classmethod
    def parse_traces(cls, text: str, rate: float = GO_RATE) -> Profile:
        """`go tool pprof -traces` of a CPU profile: blocks between `-----------+` lines, each a
        time and the leaf frame, then its callers one per line (root last); label lines (`key:
        value`) are skipped. Times become samples at `rate`."""
        prof = cls()
        for block in re.split(r"^-+\+-+$", text, flags=re.MULTILINE)[1:]:
            lines = [ln for ln in block.splitlines() if ln.strip() and not re.match(r"\s*[\w.-]+:\s", ln)]
            m = re.match(r"\s*([\d.]+)(ns|us|µs|ms|s)\s+(\S.*)$", lines[0]) if lines else None
            if m is None:
                continue
            prof.add([f.strip().removesuffix(" (inline)") for f in [m[3], *lines[1:]]][::-1],
                     round(float(m[1]) * _UNITS[m[2]] * rate))
        return prof


def load(spec: str) -> tuple[Profile, float]:
    """A profile and its sampling rate: py-spy's collapsed stacks from a file, or Go CPU profiles
    (`*.pb.gz`, a shell pattern for several) through `go tool pprof -traces`."""
    files = sorted(glob.glob(spec)) or [spec]
    if not files[0].endswith(".pb.gz"):
        return Profile.parse(Path(files[0]).read_text()), RATE
    go = shutil.which("go")
    if go is None:
        raise SystemExit("Go profiles are read with `go tool pprof`: no go on PATH (hack/install-deps.sh needs it too)")
    out = subprocess.run([go, "tool", "pprof", "-traces", *files], capture_output=True, text=True, check=True)
    return Profile.parse_traces(out.stdout), GO_RATE


def ms_per_vm(samples: int, n: int, rate: float = RATE) -> float:
    return samples * 1000.0 / rate / n


def compare(a: Profile, na: int, b: Profile, nb: int, top: int = 25, rate: float = RATE) -> str:
    """The report: totals, then self and inclusive time per VM at both sizes, by growth."""
    out = [f"profiled time per VM: {ms_per_vm(a.samples, na, rate):.2f} ms at {na}, "
           f"{ms_per_vm(b.samples, nb, rate):.2f} ms at {nb}"]
    for title, ca, cb in (("self", a.own, b.own), ("inclusive", a.inclusive, b.inclusive)):
        out.append(f"{title + ' ms per VM, N =':26}{na:>8}{nb:>8}  growth")
        rows = sorted(set(ca) | set(cb),
                      key=lambda f: ms_per_vm(cb[f], nb, rate) - ms_per_vm(ca[f], na, rate), reverse=True)
        for f in rows[:top]:
            x, y = ms_per_vm(ca[f], na, rate), ms_per_vm(cb[f], nb, rate)
            out.append(f"{'':26}{x:>8.2f}{y:>8.2f}{y - x:>+8.2f}  {f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="py-spy collapsed stacks, or Go CPU profiles (a quoted pattern: 'x-1000-*.pb.gz')")
    ap.add_argument("na", type=int)
    ap.add_argument("b")
    ap.add_argument("nb", type=int)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    (a, rate_a), (b, rate_b) = load(args.a), load(args.b)
    if rate_a != rate_b:
        raise SystemExit("compare a py-spy profile with a py-spy profile, a Go profile with a Go profile")
    print(compare(a, args.na, b, args.nb, args.top, rate_a))


if __name__ == "__main__":
    main()
