"""Named failure points (in the manner of etcd's gofail): off unless the environment variable
FAILOVERVM_FAILPOINTS enables them, e.g.

    FAILOVERVM_FAILPOINTS="placement.after-status=kill"
    FAILOVERVM_FAILPOINTS="agent.migrate.after-vm-moved=kill;migration.after-target-ready=sleep(5)"

Actions: `kill` (SIGKILL this process: a crash between two writes), `error` (raise
FailpointError, as a failed API call would), `sleep(S)`. The e2e crash matrix
(tests/e2e/test_crash_matrix.py) kills the controller or an agent at each point, restarts it and
checks that everything converges (docs/reliability.md). Production never sets the variable; a
point costs one environment lookup.

Every point is listed in POINTS (a test checks that each `hit` names one)."""

from __future__ import annotations

import logging
import os
import re
import signal
import time

log = logging.getLogger(__name__)

ENV = "FAILOVERVM_FAILPOINTS"

POINTS = {
    # controller: placement
    "placement.after-claim": "the VF claimed on the node kube-scheduler chose; status not written",
    "placement.after-status": "status.nodeName written; node label and agent finalizer not",
    # controller: migration
    "migration.after-target-claim": "the target VF claimed; the migration not TargetReady",
    "migration.after-target-ready": "the migration TargetReady; the VM's lock not updated",
    "migration.cleanup.after-unlock": "a finished migration's VM unlocked; claims and pods not settled",
    # controller: release (fenced node) and deletion
    "release.after-unlabel": "the fenced node's label removed from the VM; its status not released",
    "finalize.before-claims": "a deleted VM's domain removed; its VF claims not released",
    # controller: high availability
    "ha.renew.active": "the active replica's keep-alive thread renews its peering entry (the API out of reach)",
    # agent: migration on the source node
    "agent.migrate.after-take": "the VM's lock says Running (the agent's commit); the migration not",
    "agent.migrate.mid-transfer": "the transfer started in libvirt; the agent gone while it runs",
    "agent.migrate.after-vm-moved": "the VM's status moved to the target; its label not",
    "agent.migrate.after-label": "status and label on the target; the migration not Succeeded",
    "agent.migrate.failed.after-unlock": "a failed migration's VM unlocked; the migration not Failed",
    # agent: deletion and eviction
    "agent.delete.before-finalizer": "the domain removed; the agent finalizer not",
    "agent.evict.after-unlabel": "shut down for evictionStrategy Shutdown, label removed; status not released",
}


class FailpointError(RuntimeError):
    """Raised by a failpoint with the action `error`."""


def _action(name: str) -> str | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    for item in spec.split(";"):
        key, _, action = item.strip().partition("=")
        if key == name:
            return action or "kill"
    return None


def enabled(name: str) -> bool:
    return _action(name) is not None


def hit(name: str) -> None:
    """A failure point: does nothing unless FAILOVERVM_FAILPOINTS enables `name`."""
    action = _action(name)
    if action is None:
        return
    log.warning("failpoint %s: %s", name, action)
    if action == "kill":
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # never returns
    if action == "error":
        raise FailpointError(f"failpoint {name}")
    m = re.fullmatch(r"sleep\((\d+(?:\.\d+)?)\)", action)
    if m:
        time.sleep(float(m.group(1)))
        return
    raise ValueError(f"{ENV}: unknown action {action!r} for {name}")
