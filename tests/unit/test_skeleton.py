"""Project skeleton invariants."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

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


def test_product_never_imports_the_sandbox() -> None:
    """failovervm_sandbox imports failovervm, never the other way round; the one exception is
    `failovervm sandbox`, which imports the sandbox's command line when it runs."""
    found = set()
    for path in sorted((REPO / "operator" / "failovervm").rglob("*.py")):
        tree = ast.parse(path.read_text())
        function: dict[ast.AST, str] = {}
        for fn in ast.walk(tree):  # breadth first: the outermost function owns a nested import
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    function.setdefault(node, fn.name)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "failovervm_sandbox" for n in names):
                found.add((path.relative_to(REPO).as_posix(), function.get(node)))
    assert found == {("operator/failovervm/cli.py", "cmd_sandbox")}


def test_cli_loads_the_sandbox_only_for_the_sandbox_command() -> None:
    code = ("import sys; from failovervm import cli; p = cli.build_parser(); "
            "p.parse_args(['controller', '--storage-root', '/x']); p.parse_args(['agent', '--node', 'n', "
            "'--storage-root', '/x']); p.parse_args(['status']); p.parse_args(['sandbox', 'up', '--nodes', '3']); "
            "print(sorted(m for m in sys.modules if m.startswith('failovervm_sandbox')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_sandbox_command_hands_its_arguments_to_the_sandbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from failovervm import cli

    assert cli.main(["sandbox", "status", "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out == f"no sandbox in {tmp_path}\n"
    with pytest.raises(SystemExit) as exc:
        cli.main(["sandbox", "status", "--state-dir", str(tmp_path), "--bogus"])
    assert exc.value.code == 2
    assert "failovervm: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_ci_run_calls_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "hack/test.sh" in readme
    assert "exec hack/test.sh" in ci
