"""The logic behind `failovervm status`, `failovervm evacuate` and `failovervm console`.

Everything here works on plain dicts as the API returns them (FailoverVM, FailoverVMMigration,
VFPool, Node) and returns rows, documents or text, so it can be tested with handmade objects.
The few I/O helpers (progress displays, log follower, evacuation watch loop) take their streams,
clock and data source as arguments for the same reason.

Tables and the live progress bar are drawn by `rich`. Colour and in-place redraws happen only on
a terminal: output to a pipe or file is plain text without escape codes (FORCE_COLOR and
TTY_COMPATIBLE do not change that), so scripts and tests can read it.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from failovervm import conditions, labels
from failovervm import migration as mg
from failovervm.scheduling import EVACUATION_TAINT_KEYS, NodeInfo

NONE = "<none>"

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], Any]]


# -- terminal output -------------------------------------------------------------------------------
def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


# Tables are never wrapped or cut to the terminal's width (like kubectl, the terminal wraps long lines).
_UNLIMITED_WIDTH = 100_000


def render_text(renderable: RenderableType, color: bool = False) -> str:
    """`renderable` as text; escape codes only with `color` (NO_COLOR still applies), no trailing blanks."""
    buf = io.StringIO()
    console = Console(file=buf, width=_UNLIMITED_WIDTH, force_terminal=color,
                      color_system="standard" if color else None, highlight=False, emoji=False,
                      legacy_windows=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().split("\n"))


# -- tables ----------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None or value == "":
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Columns whose value says how well things go; on a terminal their cells are coloured by first word.
STATUS_COLUMNS = frozenset({"PHASE", "READY", "VFATTACHED", "FAILOVER", "SCHEDULABLE"})
_STATUS_STYLES = {"Running": "green", "True": "green", "Yes": "green", "Failed": "red", "False": "red", "No": "red",
                  "Unknown": "yellow", "Pending": "yellow", "Scheduled": "yellow", "Starting": "yellow",
                  "Migrating": "yellow", "Stopping": "yellow"}


def _styled_cell(header: str, value: Any) -> Text:
    text = _cell(value)
    if text == NONE:
        return Text(text, style="dim")
    style = _STATUS_STYLES.get(text.split(" ", 1)[0], "") if header in STATUS_COLUMNS else ""
    return Text(text, style=style)  # a Text, so that nothing in API data is read as rich markup


def table(columns: Sequence[Column], rows: Iterable[Row]) -> Table:
    """kubectl-style table: upper-case headers, left-aligned, three spaces between columns, no borders."""
    t = Table(box=None, padding=(0, 3, 0, 0), pad_edge=False, show_edge=False, header_style="bold")
    for header, _ in columns:
        t.add_column(header, no_wrap=True)
    for r in rows:
        t.add_row(*(_styled_cell(header, get(r)) for header, get in columns))
    return t


def render_table(columns: Sequence[Column], rows: Iterable[Row], color: bool = False) -> str:
    return render_text(table(columns, rows), color=color)


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _cond(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    return conditions.get((obj.get("status") or {}).get("conditions"), type_)


# -- status: FailoverVMs ---------------------------------------------------------------------------
def vm_row(vm: Mapping[str, Any]) -> Row:
    st = vm.get("status") or {}
    ready = _cond(vm, "Ready") or {}
    vfa = _cond(vm, "VFAttached") or {}
    fo = _cond(vm, "FailoverReady") or {}
    ns, name = _key(vm)
    return {
        "namespace": ns,
        "name": name,
        "phase": st.get("phase"),
        "node": st.get("nodeName"),
        "vf": (st.get("vf") or {}).get("pciAddress"),
        "ready": ready.get("status"),
        "readyReason": ready.get("reason"),
        "vfAttached": vfa.get("status"),
        "vfAttachedReason": vfa.get("reason"),
        "vfAttachedMessage": vfa.get("message"),
        "failoverReady": fo.get("status"),
        "failoverReadyReason": fo.get("reason"),
    }


def vm_rows(vms: Iterable[Mapping[str, Any]], namespace: str | None = None) -> list[Row]:
    """One row per FailoverVM (only `namespace`'s unless None), sorted by namespace and name."""
    rows = [vm_row(vm) for vm in vms]
    if namespace is not None:
        rows = [r for r in rows if r["namespace"] == namespace]
    return sorted(rows, key=lambda r: (r["namespace"], r["name"]))


def _with_reason(status: Any, reason: Any) -> str | None:
    if not status:
        return None
    return f"{status} ({reason})" if reason and status != "True" else str(status)


VM_COLUMNS: list[Column] = [
    ("NAMESPACE", lambda r: r["namespace"]),
    ("NAME", lambda r: r["name"]),
    ("PHASE", lambda r: r["phase"]),
    ("NODE", lambda r: r["node"]),
    ("VF", lambda r: r["vf"]),
    ("READY", lambda r: r["ready"]),
    ("VFATTACHED", lambda r: _with_reason(r["vfAttached"], r["vfAttachedReason"])),
    ("FAILOVER", lambda r: _with_reason(r["failoverReady"], r["failoverReadyReason"])),
]


# -- status: nodes ---------------------------------------------------------------------------------
def unschedulable_reasons(node: Mapping[str, Any]) -> list[str]:
    """Why the operator places no VM on the node: cordoned, evacuation taints, not Ready."""
    info = NodeInfo.from_k8s(node)
    reasons = ["cordoned"] if info.unschedulable else []
    taints = {t.key for t in info.taints if t.key in EVACUATION_TAINT_KEYS}
    if info.unschedulable:  # the node lifecycle controller mirrors a cordon as this taint
        taints.discard("node.kubernetes.io/unschedulable")
    reasons += sorted(taints)
    if not info.ready:
        reasons.append("NotReady")
    return reasons


def with_inventories(pools: Iterable[Mapping[str, Any]], inventories: Iterable[Mapping[str, Any]],
                     claims: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pools with a status.nodes entry per node (node, total, allocated, free, simulated,
    missingPfs) computed from the nodes' VFInventories and the VFClaims: the shape the tables
    read. Per-node VF lists an earlier version kept in VFPool status are ignored."""
    taken = {(str((c.get("spec") or {}).get("node")), str((c.get("spec") or {}).get("pciAddress"))) for c in claims}
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for inv in inventories:
        node = str((inv.get("metadata") or {}).get("name") or "")
        for entry in (inv.get("spec") or {}).get("pools") or []:
            vfs = [str(v.get("pciAddress")) for v in entry.get("vfs") or []]
            allocated = sum(1 for pci in vfs if (node, pci) in taken)
            e: dict[str, Any] = {"node": node, "total": len(vfs), "allocated": allocated,
                                 "free": len(vfs) - allocated, "simulated": bool(entry.get("simulated"))}
            if entry.get("missingPfs"):
                e["missingPfs"] = list(entry["missingPfs"])
            by_pool.setdefault(str(entry.get("name")), []).append(e)
    out = []
    for pool in pools:
        p = dict(pool)
        name = str((p.get("metadata") or {}).get("name") or "")
        p["status"] = {**dict(p.get("status") or {}), "nodes": by_pool.get(name, [])}
        out.append(p)
    return out


def pool_entries(pools: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(pool name, status.nodes entry) for every node of every pool."""
    out = []
    for pool in pools:
        name = str((pool.get("metadata") or {}).get("name") or "")
        for e in (pool.get("status") or {}).get("nodes") or []:
            out.append((name, dict(e)))
    return out


def _entry_counts(e: Mapping[str, Any]) -> tuple[int, int | None, int | None]:
    """(total, allocated, free) of a pool entry; allocated/free are None until the controller counted."""
    total = int(e["total"]) if e.get("total") is not None else len(e.get("vfs") or [])
    allocated = int(e["allocated"]) if e.get("allocated") is not None else None
    if e.get("free") is not None:
        free: int | None = int(e["free"])
    else:
        free = total - allocated if allocated is not None else None
    return total, allocated, free


def node_row(node: Mapping[str, Any], vms: Iterable[Mapping[str, Any]], pools: Iterable[Mapping[str, Any]]) -> Row:
    name = str((node.get("metadata") or {}).get("name") or "")
    reasons = unschedulable_reasons(node)
    in_pool = False
    used = total = 0
    for _, e in pool_entries(pools):
        if e.get("node") == name:
            in_pool = True
            t, a, _f = _entry_counts(e)
            total += t
            used += a or 0
    return {
        "name": name,
        "schedulable": not reasons,
        "unschedulableReasons": reasons,
        "vms": sum(1 for vm in vms if (vm.get("status") or {}).get("nodeName") == name),
        "vfAllocated": used if in_pool else None,
        "vfTotal": total if in_pool else None,
    }


def node_rows(nodes: Iterable[Mapping[str, Any]], vms: Iterable[Mapping[str, Any]],
              pools: Iterable[Mapping[str, Any]]) -> list[Row]:
    vms, pools = list(vms), list(pools)
    return sorted((node_row(n, vms, pools) for n in nodes), key=lambda r: r["name"])


def _schedulable_cell(r: Row) -> str:
    return "Yes" if r["schedulable"] else f"No ({', '.join(r['unschedulableReasons'])})"


def _vf_cell(r: Row) -> str | None:
    return None if r["vfTotal"] is None else f"{r['vfAllocated']}/{r['vfTotal']}"


NODE_COLUMNS: list[Column] = [
    ("NODE", lambda r: r["name"]),
    ("SCHEDULABLE", _schedulable_cell),
    ("VMS", lambda r: r["vms"]),
    ("VF", _vf_cell),
]


# -- status: VF pools ------------------------------------------------------------------------------
def pool_rows(pools: Iterable[Mapping[str, Any]]) -> list[Row]:
    """One row per pool and node (a pool without nodes gets one row with node None)."""
    rows: list[Row] = []
    for pool in sorted(pools, key=lambda p: str((p.get("metadata") or {}).get("name") or "")):
        name = str((pool.get("metadata") or {}).get("name") or "")
        entries = sorted((pool.get("status") or {}).get("nodes") or [], key=lambda e: str(e.get("node") or ""))
        if not entries:
            rows.append({"pool": name, "node": None, "total": 0, "allocated": 0, "free": 0, "simulated": False})
        for e in entries:
            total, allocated, free = _entry_counts(e)
            row: Row = {"pool": name, "node": e.get("node"), "total": total, "allocated": allocated, "free": free,
                        "simulated": bool(e.get("simulated"))}
            if e.get("missingPfs"):
                row["missingPfs"] = list(e["missingPfs"])
            rows.append(row)
    return rows


POOL_COLUMNS: list[Column] = [
    ("POOL", lambda r: r["pool"]),
    ("NODE", lambda r: r["node"]),
    ("TOTAL", lambda r: r["total"]),
    ("ALLOCATED", lambda r: r["allocated"]),
    ("FREE", lambda r: r["free"]),
    ("SIMULATED", lambda r: r["simulated"]),
]


# -- status: migrations ------------------------------------------------------------------------------
def migration_rows(migrations: Iterable[Mapping[str, Any]], namespace: str | None, last: int = 10) -> list[Row]:
    """The `last` most recent migrations (in `namespace`; None: all), newest first: outcome, downtime,
    how long the guest ran on its virtio standby, the policy and the stream's endpoint."""
    mine = [m for m in migrations if namespace is None or (m.get("metadata") or {}).get("namespace") == namespace]
    mine.sort(key=lambda m: (str((m.get("status") or {}).get("startTimestamp")
                                 or (m.get("metadata") or {}).get("creationTimestamp") or ""),
                             str((m.get("metadata") or {}).get("name"))), reverse=True)
    rows: list[Row] = []
    for m in mine[:last]:
        meta, st = m.get("metadata") or {}, m.get("status") or {}
        stats = st.get("stats") or {}
        rows.append({"namespace": meta.get("namespace"), "name": meta.get("name"),
                     "vm": (m.get("spec") or {}).get("vmName"), "phase": mg.phase(m),
                     "source": st.get("sourceNode"), "target": st.get("targetNode"),
                     "downtimeMs": stats.get("downtimeMs"), "standbyMs": stats.get("standbyMs"),
                     "policy": (st.get("policy") or {}).get("name") or None, "stream": st.get("migrationEndpoint"),
                     "reason": st.get("reason") or None})
    return rows


MIGRATION_COLUMNS: list[Column] = [
    ("MIGRATION", lambda r: r["name"]),
    ("VM", lambda r: r["vm"]),
    ("PHASE", lambda r: r["phase"]),
    ("SOURCE", lambda r: r["source"]),
    ("TARGET", lambda r: r["target"]),
    ("DOWNTIME", lambda r: None if r["downtimeMs"] is None else f"{r['downtimeMs']}ms"),
    ("STANDBY", lambda r: None if r["standbyMs"] is None else f"{r['standbyMs'] / 1000:.1f}s"),
    ("POLICY", lambda r: r["policy"]),
    ("REASON", lambda r: r["reason"]),
]


# -- status: the whole document ---------------------------------------------------------------------
def status_document(vms: Iterable[Mapping[str, Any]], nodes: Iterable[Mapping[str, Any]],
                    pools: Iterable[Mapping[str, Any]], namespace: str | None = None,
                    migrations: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """What `failovervm status -o json|yaml` prints. VMs and migrations are limited to `namespace`
    (None: all); nodes and pools are cluster-wide, and node VM counts include every namespace."""
    vms, pools = list(vms), list(pools)
    return {
        "namespace": namespace,
        "vms": vm_rows(vms, namespace),
        "nodes": node_rows(nodes, vms, pools),
        "pools": pool_rows(pools),
        "migrations": migration_rows(migrations, namespace),
    }


def render_status(doc: Mapping[str, Any], color: bool = False) -> str:
    """The three tables of `failovervm status`, separated by blank lines (`color`: for a terminal)."""
    parts = []
    if doc["vms"]:
        parts.append(render_table(VM_COLUMNS, doc["vms"], color))
    elif doc.get("namespace") is not None:
        parts.append(f"No FailoverVMs found in {doc['namespace']} namespace.\n")
    else:
        parts.append("No FailoverVMs found.\n")
    parts.append(render_table(NODE_COLUMNS, doc["nodes"], color) if doc["nodes"] else "No nodes found.\n")
    parts.append(render_table(POOL_COLUMNS, doc["pools"], color) if doc["pools"] else "No VFPools found.\n")
    if doc.get("migrations"):
        parts.append(render_table(MIGRATION_COLUMNS, doc["migrations"], color))
    return "\n".join(parts)


# -- evacuate --------------------------------------------------------------------------------------
CORDON_PATCH: dict[str, Any] = {"spec": {"unschedulable": True}}


def is_cordoned(node: Mapping[str, Any]) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))


def is_evacuating(node: Mapping[str, Any]) -> bool:
    """Cordoned or tainted for evacuation (what makes the controller move the node's VMs)."""
    info = NodeInfo.from_k8s(node)
    return info.unschedulable or any(t.key in EVACUATION_TAINT_KEYS for t in info.taints)


@dataclass(frozen=True)
class EvacuationProgress:
    node: str
    total: int
    """VMs seen on the node since the watch began."""
    moved: int
    """Of those, VMs no longer on the node (migrated, shut down for a restart elsewhere, or deleted)."""
    migrating: int
    waiting: int
    reasons: dict[str, str] = field(default_factory=dict)
    """namespace/name -> why the VM is still waiting."""
    remaining: tuple[str, ...] = ()
    """namespace/name of the VMs still on the node."""
    tracked: frozenset[str] = frozenset()
    """Pass back in as `tracked` on the next call, so VMs that left keep counting as moved."""

    @property
    def done(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "total": self.total, "moved": self.moved, "migrating": self.migrating,
                "waiting": self.waiting, "waitingReasons": dict(self.reasons), "remaining": list(self.remaining),
                "done": self.done}


_MIGRATING_PHASES = frozenset({mg.TARGET_READY, mg.RUNNING})
_MIGRATING_STATES = frozenset({mg.TARGET_READY, mg.RUNNING, mg.ABORTING})


MigrationsByVM = dict[tuple[str, str], list[Mapping[str, Any]]]


def _evac_migrations(node: str, migrations: Iterable[Mapping[str, Any]]) -> MigrationsByVM:
    """The node's evacuation migrations per (namespace, VM name), oldest first."""
    by_vm: MigrationsByVM = {}
    for m in migrations:
        meta = m.get("metadata") or {}
        if (meta.get("labels") or {}).get(labels.EVACUATION_LABEL) != node:
            continue
        key = (str(meta.get("namespace") or ""), str((m.get("spec") or {}).get("vmName") or ""))
        by_vm.setdefault(key, []).append(m)
    for ms in by_vm.values():
        ms.sort(key=lambda m: str((m.get("metadata") or {}).get("creationTimestamp") or ""))
    return by_vm


def _vm_state(vm: Mapping[str, Any], migs: Sequence[Mapping[str, Any]]) -> str | None:
    """None when the VM is migrating away, else why it is still waiting."""
    meta = vm.get("metadata") or {}
    st = vm.get("status") or {}
    active = [m for m in migs if mg.is_active(m)]
    if active:
        mst = active[-1].get("status") or {}
        ph = mg.phase(active[-1])
        if ph in _MIGRATING_PHASES:
            return None
        return str(mst.get("reason") or ph.lower())
    if (st.get("migration") or {}).get("state") in _MIGRATING_STATES:
        return None
    if meta.get("deletionTimestamp"):
        return "being deleted"
    if (vm.get("spec") or {}).get("evictionStrategy") == "Shutdown":
        return "shutting down (evictionStrategy Shutdown)"
    if st.get("phase") != "Running":
        return f"not running (phase {st.get('phase') or 'unknown'})"
    failed = [m for m in migs if mg.phase(m) in (mg.FAILED, mg.ABORTED)]
    if failed:
        last = failed[-1].get("status") or {}
        return f"{len(failed)} failed attempt(s), last: {last.get('reason') or mg.phase(failed[-1])}"
    return "queued (parallel migration limits)"


def evacuation_progress(node: str, vms: Iterable[Mapping[str, Any]], migrations: Iterable[Mapping[str, Any]],
                        tracked: Iterable[str] = ()) -> EvacuationProgress:
    """How far the evacuation of `node` is: VMs are on the node while their status.nodeName names it."""
    on_node = sorted((vm for vm in vms if (vm.get("status") or {}).get("nodeName") == node), key=_key)
    by_vm = _evac_migrations(node, migrations)
    keys = [f"{ns}/{name}" for ns, name in map(_key, on_node)]
    seen = frozenset(tracked) | frozenset(keys)
    migrating = 0
    reasons: dict[str, str] = {}
    for vm, key in zip(on_node, keys, strict=True):
        why = _vm_state(vm, by_vm.get(_key(vm), []))
        if why is None:
            migrating += 1
        else:
            reasons[key] = why
    return EvacuationProgress(
        node=node, total=len(seen), moved=len(seen) - len(on_node), migrating=migrating, waiting=len(reasons),
        reasons=reasons, remaining=tuple(keys), tracked=seen)


def _waiting_text(p: EvacuationProgress) -> str:
    """`2 migrating, 1 waiting (NoFreeVF)`"""
    text = f"{p.migrating} migrating, {p.waiting} waiting"
    if p.reasons:
        counts = Counter(p.reasons.values())
        text += " (" + "; ".join(r if n == 1 else f"{n}x {r}" for r, n in counts.most_common()) + ")"
    return text


def render_progress(p: EvacuationProgress, bar_width: int = 20) -> str:
    """`[#######.............] 3/6 VMs moved, 2 migrating, 1 waiting (NoFreeVF)`: one line for logs and pipes."""
    filled = bar_width if p.total == 0 else bar_width * p.moved // p.total
    return f"[{'#' * filled}{'.' * (bar_width - filled)}] {p.moved}/{p.total} VMs moved, {_waiting_text(p)}"


def progress_view(p: EvacuationProgress, bar_width: int = 30) -> RenderableType:
    """The terminal's progress display: a rich progress bar and the counts, then why VMs wait."""
    bar = Table.grid(padding=(0, 1))
    bar.add_row(Text(f"evacuating {p.node}", style="bold"),
                ProgressBar(total=p.total, completed=p.moved, width=bar_width),
                Text(f"{p.moved}/{p.total} VMs moved"))
    return Group(bar, Text(_waiting_text(p)))


class ProgressDisplay(Protocol):
    def update(self, p: EvacuationProgress) -> None: ...

    def finish(self) -> None: ...


class PlainProgress:
    """Progress for pipes and logs: the `render_progress` line, once per change."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last: str | None = None

    def update(self, p: EvacuationProgress) -> None:
        line = render_progress(p)
        if line != self._last:
            self._last = line
            self.out.write(line + "\n")
            self.out.flush()

    def finish(self) -> None:
        pass


class LiveProgress:
    """Progress on a terminal: `progress_view`, redrawn in place by rich (which fits it to the width)."""

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, auto_refresh=False)
        self._last: EvacuationProgress | None = None

    def update(self, p: EvacuationProgress) -> None:
        if p == self._last:
            return
        self._last = p
        if not self._live.is_started:
            self._live.start()
        self._live.update(progress_view(p), refresh=True)

    def finish(self) -> None:
        self._live.stop()


def progress_display(out: TextIO) -> ProgressDisplay:
    """A live progress bar on an interactive terminal, else one plain line per change."""
    # force_terminal: whether `out` is a tty decides, not FORCE_COLOR or TTY_COMPATIBLE
    console = Console(file=out, force_terminal=is_tty(out), highlight=False, emoji=False)
    return LiveProgress(console) if console.is_terminal and console.is_interactive else PlainProgress(out)


@dataclass
class WatchResult:
    code: int
    """0: no VM left on the node; 1: timeout or the evacuation was stopped."""
    progress: EvacuationProgress
    message: str


def watch_evacuation(
    node: str,
    fetch: Callable[[], tuple[Mapping[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]],
    display: ProgressDisplay,
    timeout: float,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WatchResult:
    """Poll `fetch() -> (node object, VMs, migrations)` until no VM is on the node, the node is no
    longer cordoned/tainted (the evacuation stops), or `timeout` seconds passed."""
    deadline = clock() + timeout
    tracked: frozenset[str] = frozenset()
    while True:
        node_obj, vms, migrations = fetch()
        p = evacuation_progress(node, vms, migrations, tracked)
        tracked = p.tracked
        display.update(p)
        if p.done:
            display.finish()
            return WatchResult(0, p, f"node/{node} evacuated: no FailoverVM left on it ({p.moved} moved)")
        if node_obj is None:
            display.finish()
            return WatchResult(1, p, f"node {node} was deleted with {len(p.remaining)} FailoverVM(s) on it")
        if not is_evacuating(node_obj):
            display.finish()
            return WatchResult(1, p, f"node {node} is no longer cordoned: the evacuation stopped with "
                                     f"{len(p.remaining)} FailoverVM(s) left ({', '.join(p.remaining)})")
        if clock() >= deadline:
            display.finish()
            return WatchResult(1, p, f"timed out after {timeout:g}s: {len(p.remaining)} FailoverVM(s) still on "
                                     f"{node} ({', '.join(p.remaining)})")
        sleep(min(interval, max(deadline - clock(), 0.0)))


# -- console ---------------------------------------------------------------------------------------
def console_log_path(log_dir: Path, domain: str) -> Path:
    """Where the agent's --serial-log-dir puts the serial console of libvirt domain `domain`."""
    return log_dir / f"{domain}.log"


def console_missing_message(path: Path, namespace: str, name: str, node: str | None, vm_found: bool | None) -> str:
    """Why there is nothing to show, and where the log lives."""
    msg = f"no console log for FailoverVM {namespace}/{name} at {path}"
    if vm_found is False:
        return msg + f" (and FailoverVM {namespace}/{name} does not exist)"
    where = f"node {node}" if node else "the node running the VM"
    return (msg + ".\nThe agent writes <serial-log-dir>/<domain name>.log (agent flag --serial-log-dir) on "
            f"{where}; outside the sandbox the file exists only there: run this command on that node "
            "with --log-dir DIR, or read the file there.")


def follow_file(path: Path, out: BinaryIO, offset: int = 0, interval: float = 0.5,
                stop: Callable[[], bool] = lambda: False, sleep: Callable[[float], None] = time.sleep) -> int:
    """`tail -f` from `offset`: copy new bytes as they are appended; start over when the file is
    replaced or truncated. Returns the offset reached when `stop()` turns true."""
    fh = None
    ino = None
    try:
        while not stop():
            if fh is None:
                try:
                    fh = path.open("rb")
                except FileNotFoundError:
                    sleep(interval)
                    continue
                ino = os.fstat(fh.fileno()).st_ino
                fh.seek(offset)
            data = fh.read(65536)
            if data:
                out.write(data)
                out.flush()
                offset += len(data)
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino != ino or st.st_size < offset):
                fh.close()
                fh, offset = None, 0
                continue
            sleep(interval)
    finally:
        if fh is not None:
            fh.close()
    return offset
