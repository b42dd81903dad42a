"""Two controller replicas (#13): exactly one active, both answering the webhooks; kill -9 of the
active one and the standby takes over within the peering lifetime (10 s), while the standby's
eviction webhook already held the drain (429) and started the VM's migration meanwhile; and an
active replica that can no longer renew its peering entry stands down before that lifetime ends."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import time
from typing import Any

import pytest

from failovervm import failpoints, labels
from failovervm.controller import ha
from failovervm_sandbox import procs
from tests.conftest import Sandbox, controller_keys, make_namespace, restart_operator, wait_for
from tests.e2e.helpers import apply, get_vm, pool_manifest, vm_manifest, wait_phase

pytestmark = pytest.mark.e2e
POOL = "ha-pool"
RENEW_POINT = "ha.renew.active"


def peers(sb: Sandbox) -> dict[str, dict[str, Any]]:
    """The live entries of the ClusterKopfPeering: identity -> {priority, lastseen, lifetime}."""
    obj = sb.kubectl_json("get", "clusterkopfpeering", labels.PEERING_NAME)
    now = dt.datetime.now(dt.UTC)
    live = {}
    for ident, p in (obj.get("status") or {}).items():
        seen = dt.datetime.fromisoformat(p["lastseen"]).replace(tzinfo=dt.UTC)
        if seen + dt.timedelta(seconds=p["lifetime"]) > now:
            live[ident] = p
    return live


def log_of(sb: Sandbox, key: str) -> str:
    return (sb.state_dir / "logs" / f"{key}.log").read_text(errors="replace")


def fvm_lists(sb: Sandbox) -> float:
    """How many LISTs of FailoverVMs the API server has served (its apiserver_request_total)."""
    text = sb.kubectl("get", "--raw", "/metrics").stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("apiserver_request_total{") and 'verb="LIST"' in line
               and 'resource="failovervms"' in line)


def test_kill_the_active_controller_and_the_standby_takes_over(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    live = wait_for(lambda: (p := peers(sb)) and len(p) == 2 and p, 30, what="two live controller replicas")
    prios = {ident: p["priority"] for ident, p in live.items()}
    assert len(set(prios.values())) == 2, prios  # distinct: never "Pausing all operators, including self"
    active = max(prios, key=lambda i: prios[i])
    standby = next(i for i in prios if i != active)
    assert {active, standby} == {"controller", "controller-2"}
    # Kopf pauses the replica that sees a live peer of higher priority; one that starts paused logs
    # nothing (only a transition is logged), so the priorities are the proof, and the standby's
    # "Resuming operations" after the kill below shows it was paused until then.
    assert "Pausing all operators" not in log_of(sb, standby) + log_of(sb, active)

    ns = make_namespace(sb, "ha")
    apply(sb, pool_manifest(POOL, sb.data["bridge"]), vm_manifest("ha-a", ns, POOL))
    src = wait_phase(sb, ns, "ha-a", "Running")["status"]["nodeName"]
    pod = next(p["metadata"]["name"] for p in sb.kubectl_json("-n", ns, "get", "pods", "-l",
                                                              f"{labels.VM_LABEL}=ha-a")["items"])
    resumed_before = log_of(sb, standby).count("Resuming operations")
    mac = str(get_vm(sb, ns, "ha-a")["status"]["mac"])  # type: ignore[index]
    lists_before = fvm_lists(sb)

    os.kill(sb.data[active]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    try:
        # The standby checks a MAC against its own watch of the FailoverVMs, not a LIST of them all:
        # four refusals, and at most one LIST meanwhile (the agent's 30 s resync may fall in).
        for i in range(4):
            dup = sb.kubectl("apply", "-f", "-", check=False, input=json.dumps(
                vm_manifest(f"ha-dup-{i}", ns, POOL, network={"pool": POOL, "mac": mac})))
            assert dup.returncode != 0 and f"spec.network.mac: {mac} is already used" in dup.stderr, dup.stderr
        assert time.monotonic() - killed < 8  # well before the standby takes over (10 s lifetime)
        assert fvm_lists(sb) - lists_before <= 1  # (Kopf's own LIST comes with the takeover, later)
        # At once, with no active replica: the standby answers both webhooks behind the Service.
        eviction = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                               "metadata": {"name": pod, "namespace": ns}})
        res = sb.kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-",
                         input=eviction, check=False)
        assert res.returncode != 0 and "still runs on node" in res.stderr, res.stderr  # a 429, not a failed call
        bad = sb.kubectl("apply", "-f", "-", check=False, input=json.dumps(
            vm_manifest("ha-bad", ns, "no-such-pool")))
        assert bad.returncode != 0 and "pool" in bad.stderr, bad.stderr  # validated, the field named
        apply(sb, vm_manifest("ha-b", ns, POOL))  # admitted by the standby
        admitted = time.monotonic() - killed
        wait_for(lambda: (get_vm(sb, ns, "ha-b") or {}).get("status", {}).get("phase"), 60,
                 what="the standby acting on the new VM")
        took_over = time.monotonic() - killed
        wait_phase(sb, ns, "ha-b", "Running", timeout=90)
        # The migration the standby's webhook created is driven by it as the active replica now.
        vm = wait_for(lambda: (v := get_vm(sb, ns, "ha-a")) and v["status"].get("nodeName") not in (None, src)
                      and v["status"].get("phase") == "Running" and v, 120, what="ha-a evicted off its node")
        assert vm["metadata"]["labels"][labels.VM_NODE] == vm["status"]["nodeName"]
        assert log_of(sb, standby).count("Resuming operations") > resumed_before
        print(f"\nHA: webhooks answered {admitted:.1f}s after kill -9 of the active controller; "
              f"the standby acted on a new VM {took_over:.1f}s after it")
        assert took_over < 30, took_over  # the bound is the 10 s peering lifetime (+ a watch restart)
    finally:
        restart_operator(sb)
    # The restarted replica is newer: it stands by (a lower priority) and does not take the work back.
    after = wait_for(lambda: (p := peers(sb)) and len(p) == 2 and p, 30, what="the restarted replica in the peering")
    assert after[standby]["priority"] > after[active]["priority"], after
    assert procs.alive(sb.data[standby]["pid"], "controller")


def test_an_active_replica_that_cannot_renew_its_entry_stands_down(operator_sandbox: Sandbox) -> None:
    """The renew deadline (controller/ha.py: KeepAlive): the active replica's keep-alive renewals stop
    getting through (failpoint `ha.renew.active=error`: the API out of reach for that thread; Kopf's
    own keep-alive still renews, so only this replica knows). It exits with status 75 once 7 s passed
    since its last renewal, 3 s before the standby may take its entry for dead, and the standby then
    resumes. Without the deadline a replica cut off from the API server would act on when it came
    back, next to the one that took over."""
    sb = operator_sandbox
    wait_for(lambda: len(peers(sb)) == 2, 30, what="two live controller replicas")
    first, second = controller_keys(sb)[:2]
    argv = {k: procs.cmdline(sb.data[k]["pid"]) for k in (first, second)}
    assert all(argv.values())
    for key in (first, second):  # both: one stopped alone would hand over to the other
        procs.stop(sb.data[key]["pid"], "controller")
    logs = {k: sb.state_dir / "logs" / f"{k}-standdown.log" for k in (first, second)}
    cut_off = procs.spawn(argv[first], logs[first], env={**os.environ, failpoints.ENV: f"{RENEW_POINT}=error",
                                                         "POD_ID": first})
    standby = None
    try:
        # Alone, it is the active one; the other starts later, so it stands by (a lower priority).
        wait_for(lambda: first in peers(sb), 60, what=f"{first} in the peering")
        standby = procs.spawn(argv[second], logs[second], env={**os.environ, "POD_ID": second})
        started = time.monotonic()
        status: list[int] = []  # its wait status, once it exited (reaped here: this test started it)

        def reaped() -> bool:
            if not status:
                pid, st = os.waitpid(cut_off, os.WNOHANG)
                if pid == cut_off:
                    status.append(st)
            return bool(status)

        wait_for(reaped, 60, what=f"{first} standing down")
        exited = time.monotonic()
        assert os.waitstatus_to_exitcode(status[0]) == ha.STAND_DOWN_EXIT
        text = logs[first].read_text(errors="replace")
        assert f"failpoint {RENEW_POINT}: error" in text
        m = re.search(rf"standing down: the active replica {first} could not renew its peering entry for "
                      r"([\d.]+) s, past the 7 s renew deadline of a 10 s lifetime", text)
        assert m, text[-3000:]
        assert 7.0 <= float(m.group(1)) < 9.0  # past 7 s (printed to 0.1 s); checked twice a second
        # The standby resumes once the entry Kopf kept renewing until the exit expires (10 s).
        wait_for(lambda: "Resuming operations" in logs[second].read_text(errors="replace"), 40,
                 what=f"{second} resuming")
        resumed = time.monotonic() - exited
        live = peers(sb)
        assert second in live and first not in live, live
        print(f"\nHA: the cut-off replica stood down after {m.group(1)} s without a renewal "
              f"({exited - started:.1f} s after the standby started); the standby resumed {resumed:.1f} s later")
    finally:
        procs.stop(cut_off)
        if standby is not None:
            procs.stop(standby)
        restart_operator(sb)
    wait_for(lambda: len(peers(sb)) == 2, 60, what="both replicas back in the peering")
