"""Compare two py-spy profiles of a controller replica per VM (`benchmarks.scale --py-spy`).

`scale --py-spy` writes each replica's collapsed stacks (py-spy's raw format, sampled while the
replica holds the GIL, 50 samples/s) over the VM phase of a run with N VMs. This prints, in ms per
VM, the whole profile and each function's own (self) and inclusive time at both sizes, the
functions whose time per VM grew most first: where a replica's cost per VM changes with N.

  .venv/bin/python -m benchmarks.profile_compare py-spy-controller-1000.txt 1000 \\
      py-spy-controller-5000.txt 5000
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RATE = 50  # samples per second (benchmarks.scale.PySpy samples at this rate)


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
            n = int(count)
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
            prof.samples += n
            prof.own[frames[-1]] += n
            for f in set(frames):
                prof.inclusive[f] += n
        return prof


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
    ap.add_argument("a", type=Path)
    ap.add_argument("na", type=int)
    ap.add_argument("b", type=Path)
    ap.add_argument("nb", type=int)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rate", type=float, default=RATE)
    args = ap.parse_args()
    print(compare(Profile.parse(args.a.read_text()), args.na, Profile.parse(args.b.read_text()), args.nb,
                  args.top, args.rate))


if __name__ == "__main__":
    main()
