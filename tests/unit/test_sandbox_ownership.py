"""Two sandboxes on one machine never share a bridge or an address block: the second `up` is refused
while the first runs, and `down` leaves alone bridges another live sandbox owns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from failovervm_sandbox import SandboxError, ownership


@pytest.fixture(autouse=True)
def _run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAILOVERVM_SANDBOX_RUN_DIR", str(tmp_path / "run"))


def _sandbox(tmp_path: Path, name: str, etcd_pid: int | None) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "sandbox.json").write_text(json.dumps({"etcd": {"pid": etcd_pid}}))
    return d


def test_a_second_sandbox_on_the_same_bridge_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    # The first sandbox's etcd: procs.alive checks the PID and "etcd" in its command line.
    import subprocess

    etcd = subprocess.Popen(["bash", "-c", "exec -a fake-etcd sleep 30"])
    cmdline = Path(f"/proc/{etcd.pid}/cmdline")
    for _ in range(200):  # until bash has exec'd the stand-in (its command line names etcd)
        if cmdline.read_bytes().startswith(b"fake-etcd"):
            break
        time.sleep(0.01)
    try:
        first = _sandbox(tmp_path, "a", etcd.pid)
        second = _sandbox(tmp_path, "b", None)
        ownership.claim(first, "br0", "127.0.77.10")
        ownership.claim(first, "br0", "127.0.77.10")  # its own re-up
        with pytest.raises(SandboxError, match=rf"bridge br0 belong to the running sandbox in {first}"):
            ownership.claim(second, "br0", "127.0.88.10")
        with pytest.raises(SandboxError, match=r"addresses from 127\.0\.77\.10"):
            ownership.claim(second, "br9", "127.0.77.10")
        assert not ownership.owns_bridge(second, "br0") and ownership.owns_bridge(first, "br0")
        ownership.claim(second, "br1", "127.0.78.10")  # its own bridge and addresses: fine
        ownership.release(second, "br0", "127.0.77.10")  # not its own: nothing removed
        assert (Path(os.environ["FAILOVERVM_SANDBOX_RUN_DIR"]) / "bridge-br0").read_text() == str(first)
    finally:
        etcd.kill()
        etcd.wait()
    # The first one is gone (its etcd stopped): its claim no longer holds anyone back.
    ownership.claim(second, "br0", "127.0.77.10")
    assert ownership.owns_bridge(second, "br0")
    ownership.release(second, "br0", "127.0.77.10")
    assert ownership.owns_bridge(first, "br0")
