"""Failpoints (#13): off unless FAILOVERVM_FAILPOINTS names them; every point in the code is listed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from failovervm import failpoints
from tests.conftest import REPO


def test_off_by_default_and_only_the_named_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints.hit("placement.after-status")
    monkeypatch.setenv(failpoints.ENV, "placement.after-claim=error; migration.after-target-ready=sleep(0.01)")
    failpoints.hit("placement.after-status")
    with pytest.raises(failpoints.FailpointError):
        failpoints.hit("placement.after-claim")
    failpoints.hit("migration.after-target-ready")
    assert failpoints.enabled("placement.after-claim") and not failpoints.enabled("placement.after-status")
    monkeypatch.setenv(failpoints.ENV, "placement.after-claim=explode")
    with pytest.raises(ValueError, match="explode"):
        failpoints.hit("placement.after-claim")


def test_kill_is_a_sigkill() -> None:
    code = "from failovervm import failpoints; failpoints.hit('placement.after-status'); print('survived')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"FAILOVERVM_FAILPOINTS": "placement.after-status=kill", "PATH": "/usr/bin:/bin"})
    assert res.returncode == -9 and "survived" not in res.stdout


def test_every_point_in_the_code_is_listed_and_every_listed_point_is_in_the_code() -> None:
    used = set()
    for path in (REPO / "operator" / "failovervm").rglob("*.py"):
        used |= set(re.findall(r'failpoints\.(?:hit|enabled)\("([^"]+)"\)', path.read_text()))
    assert used == set(failpoints.POINTS)


def test_every_point_runs_in_the_e2e_crash_matrix() -> None:
    """#13: "every failure point runs in the suite": each listed point is named (as a string) by
    tests/e2e/test_crash_matrix.py, which kills the controller or an agent there, or by
    tests/e2e/test_ha.py (the peering's failures), and has a row in a table of docs/reliability.md."""
    matrix = "".join((REPO / "tests" / "e2e" / f).read_text() for f in ("test_crash_matrix.py", "test_ha.py"))
    doc = (REPO / "docs" / "reliability.md").read_text()
    assert [p for p in failpoints.POINTS if f'"{p}"' not in matrix] == []
    assert [p for p in failpoints.POINTS if f"| `{p}` |" not in doc] == []
