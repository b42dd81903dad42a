"""Project skeleton invariants."""

from __future__ import annotations

import importlib
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operator_dir_is_not_a_package() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()


def test_import_operator_is_the_stdlib() -> None:
    # Run in a fresh interpreter with the same sys.path as pytest (operator/ on it).
    code = "import operator, sys; print(operator.__file__); print(operator.itemgetter(1)([0, 42]))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO / "operator"
    ).stdout.split()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(out[0]).resolve().parent == stdlib
    assert out[1] == "42"
    mod = importlib.import_module("operator")
    assert Path(mod.__file__ or "").resolve().parent == stdlib


def test_failovervm_package_location() -> None:
    import failovervm

    assert Path(failovervm.__file__).resolve().parent == REPO / "operator" / "failovervm"


def test_cli_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "failovervm.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "sandbox" in out
    out = subprocess.run([sys.executable, "-m", "failovervm.cli", "sandbox", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for action in ("up", "down", "status"):
        assert action in out


def test_ci_run_calls_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "hack/test.sh" in readme
    assert "exec hack/test.sh" in ci
