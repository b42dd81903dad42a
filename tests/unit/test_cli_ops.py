"""`failovervm status`, `evacuate` and `console` logic on handmade API objects."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

from failovervm import cli, cli_ops
from tests.fakes import FakeKube


# -- handmade API objects ----------------------------------------------------------------------------
def vm(name: str, node: str | None, *, ns: str = "default", phase: str = "Running", vf: str | None = "0000:00:02.0",
       ready: str | None = "True", vfattached: tuple[str, str] | None = ("False", "AttachFailed"),
       migration: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
       deleting: bool = False) -> dict[str, Any]:
    conds = []
    if ready:
        conds.append({"type": "Ready", "status": ready, "reason": "Running"})
    if vfattached:
        conds.append({"type": "VFAttached", "status": vfattached[0], "reason": vfattached[1], "message": "no VFs here"})
    st: dict[str, Any] = {"phase": phase, "conditions": conds}
    if node:
        st["nodeName"] = node
    if vf:
        st["vf"] = {"pciAddress": vf, "node": node}
    if migration:
        st["migration"] = migration
    meta: dict[str, Any] = {"namespace": ns, "name": name, "uid": f"uid-{name}",
                            "labels": {"failovervm.io/node": node} if node else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": spec or {}, "status": st}


def node(name: str, *, cordoned: bool = False, taints: list[str] | None = None, ready: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if cordoned:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = [{"key": k, "effect": "NoSchedule"} for k in taints]
    return {"metadata": {"name": name}, "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pool(name: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"nodes": entries}}


def mig(name: str, vm_name: str, phase: str, *, evac: str | None = "n1", ns: str = "default", reason: str = "",
        created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    labels = {"failovervm.io/evacuation": evac} if evac else {}
    st: dict[str, Any] = {"phase": phase}
    if reason:
        st["reason"] = reason
    return {"metadata": {"namespace": ns, "name": name, "labels": labels, "creationTimestamp": created},
            "spec": {"vmName": vm_name}, "status": st}


POOLS = [
    pool("fast", [
        {"node": "n2", "total": 8, "allocated": 1, "free": 7},
        {"node": "n1", "total": 8, "allocated": 3, "free": 5, "simulated": True},
    ]),
    pool("slow", [{"node": "n1", "vfs": [{"pciAddress": "a"}, {"pciAddress": "b"}]}]),  # not counted yet
    pool("empty", []),
]
NODES = [node("n2", cordoned=True, taints=["ToBeDeletedByClusterAutoscaler"]), node("n1"), node("n3", ready=False)]
VMS = [
    vm("b", "n1"),
    vm("a", "n1", ns="other", vfattached=("True", "Attached")),
    vm("c", "n2", vf=None, ready="False", vfattached=None, phase="Starting"),
    vm("d", None, vf=None, ready=None, vfattached=None, phase="Pending"),
]


# -- status -----------------------------------------------------------------------------------------
def test_vm_rows_sorted_and_filtered() -> None:
    rows = cli_ops.vm_rows(VMS)
    assert [(r["namespace"], r["name"]) for r in rows] == [("default", "b"), ("default", "c"), ("default", "d"),
                                                          ("other", "a")]
    b = rows[0]
    assert (b["phase"], b["node"], b["vf"], b["ready"], b["vfAttached"], b["vfAttachedReason"]) == (
        "Running", "n1", "0000:00:02.0", "True", "False", "AttachFailed")
    assert [r["name"] for r in cli_ops.vm_rows(VMS, "other")] == ["a"]
    assert cli_ops.vm_rows(VMS, "nowhere") == []


def test_node_rows() -> None:
    rows = {r["name"]: r for r in cli_ops.node_rows(NODES, VMS, POOLS)}
    assert rows["n1"] == {"name": "n1", "schedulable": True, "unschedulableReasons": [], "vms": 2,
                          "vfAllocated": 3, "vfTotal": 10}
    assert rows["n2"]["schedulable"] is False
    assert rows["n2"]["unschedulableReasons"] == ["cordoned", "ToBeDeletedByClusterAutoscaler"]
    assert (rows["n2"]["vms"], rows["n2"]["vfAllocated"], rows["n2"]["vfTotal"]) == (1, 1, 8)
    assert rows["n3"]["unschedulableReasons"] == ["NotReady"]
    assert rows["n3"]["vfTotal"] is None  # in no pool
    assert [r["name"] for r in cli_ops.node_rows(NODES, VMS, POOLS)] == ["n1", "n2", "n3"]


def test_unrelated_taint_is_not_an_evacuation() -> None:
    n = node("x", taints=["dedicated"])
    assert cli_ops.unschedulable_reasons(n) == []
    assert not cli_ops.is_evacuating(n)
    assert cli_ops.is_evacuating(node("x", taints=["node.kubernetes.io/unschedulable"]))
    assert cli_ops.unschedulable_reasons(node("x", taints=["node.kubernetes.io/unschedulable"])) == [
        "node.kubernetes.io/unschedulable"]
    assert cli_ops.unschedulable_reasons(node("x", cordoned=True, taints=["node.kubernetes.io/unschedulable"])) == [
        "cordoned"]


def test_pool_rows() -> None:
    rows = cli_ops.pool_rows(POOLS)
    assert [(r["pool"], r["node"]) for r in rows] == [("empty", None), ("fast", "n1"), ("fast", "n2"), ("slow", "n1")]
    assert rows[1] == {"pool": "fast", "node": "n1", "total": 8, "allocated": 3, "free": 5, "simulated": True}
    assert rows[3] == {"pool": "slow", "node": "n1", "total": 2, "allocated": None, "free": None, "simulated": False}


def test_render_status_tables() -> None:
    doc = cli_ops.status_document(VMS, NODES, POOLS, namespace="default")
    text = cli_ops.render_status(doc)
    lines = text.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "PHASE", "NODE", "VF", "READY", "VFATTACHED", "FAILOVER"]
    assert lines[1].split() == ["default", "b", "Running", "n1", "0000:00:02.0", "True", "False", "(AttachFailed)",
                                "<none>"]
    assert lines[3].split() == ["default", "d", "Pending", "<none>", "<none>", "<none>", "<none>", "<none>"]
    assert "other" not in text  # namespace filter
    header = next(i for i, ln in enumerate(lines) if ln.split() == ["NODE", "SCHEDULABLE", "VMS", "VF"])
    assert lines[header + 1].split() == ["n1", "Yes", "2", "3/10"]
    assert lines[header + 2].split() == ["n2", "No", "(cordoned,", "ToBeDeletedByClusterAutoscaler)", "1", "1/8"]
    assert lines[header + 3].split() == ["n3", "No", "(NotReady)", "0", "<none>"]
    pools_at = next(i for i, ln in enumerate(lines) if ln.startswith("POOL"))
    assert lines[pools_at].split() == ["POOL", "NODE", "TOTAL", "ALLOCATED", "FREE", "SIMULATED"]
    assert lines[pools_at + 2].split() == ["fast", "n1", "8", "3", "5", "true"]
    assert lines[pools_at + 4].split() == ["slow", "n1", "2", "<none>", "<none>", "false"]
    # columns line up: every data cell starts where its header starts
    vf_col = lines[0].index("VF ")
    assert lines[1][vf_col:].startswith("0000:00:02.0")
    assert all(ln == ln.rstrip() for ln in lines)


def test_render_status_colour_is_only_for_terminals() -> None:
    doc = cli_ops.status_document(VMS, NODES, POOLS)
    plain = cli_ops.render_status(doc)
    assert "\x1b" not in plain
    coloured = cli_ops.render_status(doc, color=True)
    assert "\x1b[32mRunning" in coloured and "\x1b[31mNo (cordoned" in coloured and "\x1b[2m<none>" in coloured
    visible = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert [ln.rstrip() for ln in visible.splitlines()] == plain.splitlines()


def test_render_status_empty() -> None:
    text = cli_ops.render_status(cli_ops.status_document([], [], [], namespace="x"))
    assert "No FailoverVMs found in x namespace." in text
    assert "No nodes found." in text and "No VFPools found." in text
    assert "No FailoverVMs found.\n" in cli_ops.render_status(cli_ops.status_document([], [], [], None))


def test_status_document_is_serialisable() -> None:
    doc = cli_ops.status_document(VMS, NODES, POOLS)
    again = json.loads(json.dumps(doc))
    assert again["namespace"] is None
    assert len(again["vms"]) == 4 and len(again["nodes"]) == 3 and len(again["pools"]) == 4


# -- evacuate: progress -----------------------------------------------------------------------------
def test_evacuation_progress_counts() -> None:
    vms = [
        vm("a", "n1"),  # migrating (evacuation migration Running)
        vm("b", "n1", migration={"name": "x", "state": "TargetReady"}),  # migrating (VM lock says so)
        vm("c", "n1"),  # waiting: its migration finds no target
        vm("d", "n2"),  # moved
        vm("e", "n1", phase="Stopped"),  # waiting: not running
        vm("f", "n1"),  # waiting: failed twice
        vm("g", "n1", spec={"evictionStrategy": "Shutdown"}),
        vm("h", "n1"),  # queued
        vm("i", "n1", ns="other"),  # another namespace's migration of the same name must not count
    ]
    migs = [
        mig("m-a", "a", "Running"),
        mig("m-c", "c", "Scheduling", reason="NoFreeVF"),
        mig("m-f1", "f", "Failed", reason="MigrationFailed", created="2026-01-01T00:00:01Z"),
        mig("m-f2", "f", "Aborted", reason="Deleted", created="2026-01-01T00:00:02Z"),
        mig("m-i", "i", "Running"),
        mig("m-h-other-node", "h", "Running", evac="n9"),  # another node's evacuation
    ]
    p = cli_ops.evacuation_progress("n1", vms, migs, tracked={"default/d", "default/gone"})
    assert (p.total, p.moved, p.migrating, p.waiting) == (10, 2, 2, 6)
    assert p.reasons == {
        "default/c": "NoFreeVF",
        "default/e": "not running (phase Stopped)",
        "default/f": "2 failed attempt(s), last: Deleted",
        "default/g": "shutting down (evictionStrategy Shutdown)",
        "default/h": "queued (parallel migration limits)",
        "other/i": "queued (parallel migration limits)",
    }
    assert not p.done
    assert "default/d" in p.tracked and "default/a" in p.tracked
    assert p.to_dict()["remaining"] == ["default/a", "default/b", "default/c", "default/e", "default/f",
                                        "default/g", "default/h", "other/i"]


def test_progress_tracks_vms_that_left() -> None:
    before = cli_ops.evacuation_progress("n1", [vm("a", "n1"), vm("b", "n1")], [mig("m", "a", "Running")])
    assert (before.total, before.moved, before.migrating, before.waiting) == (2, 0, 1, 1)
    after = cli_ops.evacuation_progress("n1", [vm("a", "n2"), vm("b", "n1")], [], before.tracked)
    assert (after.total, after.moved, after.waiting) == (2, 1, 1)
    done = cli_ops.evacuation_progress("n1", [vm("a", "n2"), vm("b", "n2")], [], after.tracked)
    assert done.done and (done.total, done.moved) == (2, 2)


def test_render_progress() -> None:
    p = cli_ops.EvacuationProgress(node="n1", total=6, moved=3, migrating=2, waiting=1,
                                   reasons={"default/x": "NoFreeVF"}, remaining=("default/x", "a/b", "a/c"))
    assert cli_ops.render_progress(p) == "[##########..........] 3/6 VMs moved, 2 migrating, 1 waiting (NoFreeVF)"
    p2 = cli_ops.EvacuationProgress(node="n1", total=4, moved=1, migrating=0, waiting=3,
                                    reasons={"a/1": "NoFreeVF", "a/2": "NoFreeVF", "a/3": "being deleted"},
                                    remaining=("a/1", "a/2", "a/3"))
    assert cli_ops.render_progress(p2, bar_width=4) == "[#...] 1/4 VMs moved, 0 migrating, 3 waiting " \
                                                       "(2x NoFreeVF; being deleted)"
    empty = cli_ops.evacuation_progress("n1", [], [])
    assert empty.done
    assert cli_ops.render_progress(empty, bar_width=2) == "[##] 0/0 VMs moved, 0 migrating, 0 waiting"


def _screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: \\r, \\n, erase line (ESC[2K) and cursor up (ESC[1A) applied."""
    lines, row, col = [""], 0, 0
    for tok in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", raw):
        if tok == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif tok == "\r":
            col = 0
        elif tok == "\x1b[2K":
            lines[row] = ""
        elif tok == "\x1b[1A":
            row = max(row - 1, 0)
        elif tok.startswith("\x1b["):
            assert tok in ("\x1b[?25l", "\x1b[?25h"), tok  # hide/show the cursor
        elif tok:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + tok + line[col + len(tok):]
            col += len(tok)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _terminal(width: int) -> tuple[io.StringIO, Console]:
    out = io.StringIO()
    return out, Console(file=out, width=width, force_terminal=True, force_interactive=True, color_system=None)


WAITING = cli_ops.EvacuationProgress(node="n1", total=2, moved=0, migrating=0, waiting=2,
                                     reasons={"a/x": "queued (parallel migration limits)",
                                              "a/y": "queued (parallel migration limits)"},
                                     remaining=("a/x", "a/y"))
HALF = cli_ops.EvacuationProgress(node="n1", total=2, moved=1, migrating=1, waiting=0, remaining=("a/y",))
DONE = cli_ops.EvacuationProgress(node="n1", total=2, moved=2, migrating=0, waiting=0)


def test_live_progress_redraws_in_place() -> None:
    out, console = _terminal(80)
    display = cli_ops.LiveProgress(console)
    display.update(WAITING)
    assert _screen(out.getvalue()) == [
        "evacuating n1                                0/2 VMs moved",
        "0 migrating, 2 waiting (2x queued (parallel migration limits))",
    ]
    drawn = len(out.getvalue())
    display.update(WAITING)  # unchanged: nothing written
    assert len(out.getvalue()) == drawn
    display.update(HALF)
    assert _screen(out.getvalue()) == [
        "evacuating n1 " + "━" * 15 + " " * 16 + "1/2 VMs moved",
        "1 migrating, 0 waiting",
    ]
    display.update(DONE)
    display.finish()
    display.finish()  # idempotent (KeyboardInterrupt after the watch ended)
    assert _screen(out.getvalue()) == ["evacuating n1 " + "━" * 30 + " 2/2 VMs moved", "0 migrating, 0 waiting"]
    assert out.getvalue().endswith("\n\x1b[?25h")  # ends on a new line, cursor shown again


def test_live_progress_fits_the_width() -> None:
    out, console = _terminal(40)
    display = cli_ops.LiveProgress(console)
    display.update(WAITING)
    display.finish()
    screen = _screen(out.getvalue())
    assert all(cell_len(line) <= 40 for line in screen), screen
    assert screen[0].startswith("evacuating n1") and screen[0].endswith("0/2 VMs moved")
    # wrapped, not cut: every word of the reasons is there
    assert " ".join(" ".join(screen[1:]).split()) == "0 migrating, 2 waiting (2x queued (parallel migration limits))"


def test_plain_progress_one_line_per_change() -> None:
    out = io.StringIO()
    display = cli_ops.PlainProgress(out)
    for p in (WAITING, WAITING, HALF, HALF, WAITING):
        display.update(p)
    display.finish()
    assert out.getvalue() == (
        "[....................] 0/2 VMs moved, 0 migrating, 2 waiting (2x queued (parallel migration limits))\n"
        "[##########..........] 1/2 VMs moved, 1 migrating, 0 waiting\n"
        "[....................] 0/2 VMs moved, 0 migrating, 2 waiting (2x queued (parallel migration limits))\n"
    )


def test_progress_display_is_plain_unless_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich would treat any stream as a terminal
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert isinstance(cli_ops.progress_display(io.StringIO()), cli_ops.PlainProgress)
    with (tmp_path / "log").open("w") as f:
        assert isinstance(cli_ops.progress_display(f), cli_ops.PlainProgress)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_watch_evacuation_until_empty() -> None:
    frames = [
        [vm("a", "n1"), vm("b", "n1")],
        [vm("a", "n2"), vm("b", "n1")],
        [vm("a", "n2"), vm("b", "n2")],
    ]
    calls = {"n": 0}

    def fetch() -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        i = min(calls["n"], len(frames) - 1)
        calls["n"] += 1
        return node("n1", cordoned=True), frames[i], []

    out, clock = io.StringIO(), _Clock()
    res = cli_ops.watch_evacuation("n1", fetch, cli_ops.PlainProgress(out), timeout=60,
                                   clock=clock, sleep=clock.sleep)
    assert res.code == 0
    assert res.progress.moved == 2
    assert out.getvalue().splitlines() == [
        "[....................] 0/2 VMs moved, 0 migrating, 2 waiting (2x queued (parallel migration limits))",
        "[##########..........] 1/2 VMs moved, 0 migrating, 1 waiting (queued (parallel migration limits))",
        "[####################] 2/2 VMs moved, 0 migrating, 0 waiting",
    ]


def test_watch_evacuation_times_out() -> None:
    def fetch() -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        return node("n1", cordoned=True), [vm("a", "n1")], [mig("m", "a", "Scheduling", reason="NoFreeVF")]

    out, clock = io.StringIO(), _Clock()
    res = cli_ops.watch_evacuation("n1", fetch, cli_ops.PlainProgress(out), timeout=5, interval=1,
                                   clock=clock, sleep=clock.sleep)
    assert res.code == 1
    assert "timed out after 5s" in res.message and "default/a" in res.message
    assert clock.t == 5
    assert out.getvalue().count("\n") == 1  # nothing changed: one line


def test_watch_evacuation_stops_when_uncordoned() -> None:
    def fetch() -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        return node("n1"), [vm("a", "n1")], []

    clock = _Clock()
    res = cli_ops.watch_evacuation("n1", fetch, cli_ops.PlainProgress(io.StringIO()), timeout=60,
                                   clock=clock, sleep=clock.sleep)
    assert res.code == 1 and "no longer cordoned" in res.message
    assert clock.t == 0


def test_taint_counts_as_evacuating_in_watch() -> None:
    def fetch() -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        return node("n1", taints=["ToBeDeletedByClusterAutoscaler"]), [vm("a", "n1")], []

    clock = _Clock()
    res = cli_ops.watch_evacuation("n1", fetch, cli_ops.PlainProgress(io.StringIO()), timeout=3,
                                   clock=clock, sleep=clock.sleep)
    assert res.code == 1 and "timed out" in res.message


# -- console ----------------------------------------------------------------------------------------
def test_console_missing_message() -> None:
    msg = cli_ops.console_missing_message(Path("/x/fvm_default_demo.log"), "default", "demo", "node-7", True)
    assert "/x/fvm_default_demo.log" in msg and "node node-7" in msg and "--serial-log-dir" in msg
    msg = cli_ops.console_missing_message(Path("/x/y.log"), "default", "demo", None, False)
    assert "does not exist" in msg


def test_follow_file_appends_and_restarts_on_truncation(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(b"boot\n")
    out = io.BytesIO()
    steps = iter([
        lambda: path.open("ab").write(b"login: "),
        lambda: path.write_bytes(b"new\n"),  # truncated (same inode, smaller)
        lambda: None,
    ])
    done = threading.Event()

    def sleep(_s: float) -> None:
        step = next(steps, None)
        if step is None:
            done.set()
        else:
            step()

    offset = cli_ops.follow_file(path, out, offset=5, stop=done.is_set, sleep=sleep)
    assert out.getvalue() == b"login: new\n"
    assert offset == 4


def test_follow_file_waits_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "late.log"
    out = io.BytesIO()
    n = {"i": 0}

    def sleep(_s: float) -> None:
        n["i"] += 1
        if n["i"] == 2:
            path.write_bytes(b"hello")

    cli_ops.follow_file(path, out, stop=lambda: n["i"] >= 4, sleep=sleep)
    assert out.getvalue() == b"hello"


def test_cli_console_prints_log(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "fvm_default_demo.log").write_bytes(b"Linux version 6.1\n\xff")
    assert cli.main(["console", "demo", "-n", "default", "--state-dir", str(tmp_path)]) == 0
    assert capsysbinary.readouterr().out == b"Linux version 6.1\n\xff"


def test_cli_console_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fvm_ns1_demo.log").write_text("hi\n")
    assert cli.main(["console", "demo", "-n", "ns1", "--log-dir", str(tmp_path), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["domain"] == "fvm_ns1_demo" and doc["log"] == "hi\n"


def test_cli_console_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_vm_node_best_effort", lambda args, ns: ("sandbox-node-2", True))
    assert cli.main(["console", "demo", "-n", "default", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no console log" in err and "sandbox-node-2" in err
    assert str(tmp_path / "console" / "fvm_default_demo.log") in err


def test_cli_parses_new_commands() -> None:
    p = cli.build_parser()
    a = p.parse_args(["status", "-A", "-o", "yaml", "--context", "c"])
    assert (a.all_namespaces, a.output, a.context, a.func) == (True, "yaml", "c", cli.cmd_status)
    a = p.parse_args(["evacuate", "n1", "--watch", "--timeout", "30", "--kubeconfig", "k"])
    assert (a.node, a.watch, a.timeout, a.kubeconfig, a.output) == ("n1", True, 30.0, "k", "table")
    a = p.parse_args(["console", "demo", "--follow", "-n", "x"])
    assert (a.name, a.follow, a.namespace) == ("demo", True, "x")
    a = p.parse_args(["migrate", "demo", "--wait"])  # unchanged
    assert a.func is cli.cmd_migrate


# -- the commands, on the shared FakeKube -----------------------------------------------------------
def test_cli_status_json_and_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kube = FakeKube().add(nodes=NODES, vms=VMS, pools=POOLS)
    monkeypatch.setattr(cli, "_kube_client", lambda args: kube)
    assert cli.main(["status", "-n", "other", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in doc["vms"]] == ["a"] and doc["namespace"] == "other"
    monkeypatch.setenv("FORCE_COLOR", "1")  # a pipe stays plain text all the same
    assert cli.main(["status", "-A"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("NAMESPACE") and "other" in out and "SIMULATED" in out
    pools = cli_ops.with_inventories(kube.list_pools(), kube.list_inventories(), kube.list_claims())
    assert out == cli_ops.render_status(cli_ops.status_document(VMS, NODES, pools))


def test_cli_evacuate_cordons_and_watches(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kube = FakeKube().add(nodes=[node("n1"), node("n2")], vms=[vm("a", "n1")])
    kube.before("list_vms", None, None, lambda: kube.add_vm(vm("a", "n2")))  # the third list finds it moved
    monkeypatch.setattr(cli, "_kube_client", lambda args: kube)
    assert cli.main(["evacuate", "n1", "--watch", "--timeout", "60", "--interval", "0"]) == 0
    assert kube.calls_of("patch_node") == [("n1", {"spec": {"unschedulable": True}})]
    assert {selector for (selector,) in kube.calls_of("list_vms")} == {"failovervm.io/node=n1"}
    out = capsys.readouterr().out
    assert "node/n1 cordoned" in out
    assert "1/1 VMs moved" in out and "node/n1 evacuated" in out

    assert cli.main(["evacuate", "n1", "-o", "json"]) == 0  # again: already cordoned, no watch
    captured = capsys.readouterr()
    assert "already cordoned" in captured.err
    assert json.loads(captured.out)["alreadyCordoned"] is True
    assert len(kube.calls_of("patch_node")) == 1


def test_cli_evacuate_unknown_node(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_kube_client", lambda args: FakeKube())
    assert cli.main(["evacuate", "nope"]) == 1
    assert "node nope not found" in capsys.readouterr().err


def test_status_counts_vfs_from_the_nodes_inventories_and_ignores_old_pool_lists() -> None:
    """`failovervm status` counts each node's VFs from its VFInventory and the VFClaims; VF lists an
    earlier version kept in VFPool status play no part."""
    kube = FakeKube()
    kube.add_inventory_pool("n1", "fast", [{"pciAddress": "0000:3b:02.0"}, {"pciAddress": "0000:3b:02.1"}],
                            simulated=True)
    kube.add_claim({"metadata": {"name": "c"}, "spec": {"node": "n1", "pool": "fast", "pciAddress": "0000:3b:02.1"}})
    old = {"metadata": {"name": "fast"}, "status": {"nodes": [{"node": "n9", "total": 64}]}}
    [fast] = cli_ops.with_inventories([old], kube.list_inventories(), kube.list_claims())
    assert fast["status"]["nodes"] == [{"node": "n1", "total": 2, "allocated": 1, "free": 1, "simulated": True}]
    assert cli_ops.pool_rows([fast])[0] | {"node": "n1"} == {"pool": "fast", "node": "n1", "total": 2,
                                                             "allocated": 1, "free": 1, "simulated": True}
