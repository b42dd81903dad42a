"""What a node's health means for the FailoverVMs on it (pure logic).

A node whose Ready condition is not True may have crashed, or may only have lost its kubelet or
its network while its VMs keep running. Starting those VMs elsewhere could run them twice, so an
unready node alone only marks its VMs (`NodeHealthy=False`). They are restarted on another node
only once the node is *fenced*, that is known not to run anything any more:

- the Node carries the taint `node.kubernetes.io/out-of-service` (Kubernetes' non-graceful node
  shutdown: set by an administrator or a remediation operator after powering the machine off).

A deleted Node is *gone*, which is no proof: `kubectl delete node` or an autoscaler's provider may
delete the object of a machine that still runs its VMs. Its VMs are marked like those of an unready
node and restarted elsewhere only with evidence that the machine no longer runs them: the
annotation failovervm.io/host-down=<node> on the VM (an administrator's or remediation tool's
confirmation), or the Node back with the out-of-service taint.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
CONDITION = "NodeHealthy"

HEALTHY, NOT_READY, FENCED, GONE = "Healthy", "NotReady", "Fenced", "Gone"


@dataclass(frozen=True)
class NodeHealth:
    state: str  # HEALTHY | NOT_READY | FENCED | GONE
    reason: str
    message: str


HOST_DOWN_ANNOTATION = "failovervm.io/host-down"  # labels.HOST_DOWN_ANNOTATION (this module imports nothing)


def out_of_service_taint(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Node's out-of-service taint (any value and effect: Kubernetes' non-graceful node
    shutdown uses NoExecute, some remediation tools NoSchedule), or None."""
    return next((dict(t) for t in (node.get("spec") or {}).get("taints") or []
                 if t.get("key") == OUT_OF_SERVICE_TAINT), None)


def is_fenced(node: Mapping[str, Any] | None) -> bool:
    """Known to be off: the out-of-service taint. None (no Node) counts too for the callers that
    only need to know whether a node can still run or take anything (never for a release)."""
    return node is None or out_of_service_taint(node) is not None


def assess(name: str, node: Mapping[str, Any] | None, now: dt.datetime | None = None) -> NodeHealth:
    """The health of node `name` (`node` is its object, None when it does not exist)."""
    if node is None:
        return NodeHealth(GONE, "NodeDeleted",
                          f"node {name} was deleted, which does not prove that its machine stopped: the VM is "
                          f"restarted elsewhere once confirmed (annotation {HOST_DOWN_ANNOTATION}={name} on the VM, "
                          f"or the Node back with the taint {OUT_OF_SERVICE_TAINT})")
    taint = out_of_service_taint(node)
    if taint is not None:
        shown = OUT_OF_SERVICE_TAINT + (f"={taint['value']}" if taint.get("value") else "") + f":{taint.get('effect')}"
        return NodeHealth(FENCED, "NodeOutOfService",
                          f"node {name} is tainted {shown} (shut down): the evidence that its machine no longer "
                          "runs the VM is that taint (Kubernetes' non-graceful node shutdown)")
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") == "True":
        return NodeHealth(HEALTHY, "NodeReady", f"node {name} is Ready")
    since = ""
    if ready is not None and ready.get("lastTransitionTime") and now is not None:
        changed = dt.datetime.fromisoformat(str(ready["lastTransitionTime"]).replace("Z", "+00:00"))
        since = f" for {max(0, int((now - changed).total_seconds()))}s"
    detail = (f"Ready={ready.get('status')} ({ready.get('reason') or 'no reason'})" if ready is not None
              else "no Ready condition")
    return NodeHealth(NOT_READY, "NodeNotReady",
                      f"node {name} is not ready{since}: {detail}. The VM may still run there; it is started "
                      f"on another node only once the node is fenced (taint {OUT_OF_SERVICE_TAINT}, or the "
                      "Node deleted)")


def condition_change(vm: Mapping[str, Any], health: NodeHealth) -> tuple[bool, str, str] | None:
    """The NodeHealthy condition to write on a VM on this node, or None when it is up to date.

    A VM that never had the condition gets none while its node is healthy (no write per VM on
    every sweep); once recorded, it goes back to True when the node recovers."""
    current = next((c for c in (vm.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION),
                   None)
    if health.state == HEALTHY:
        if current is None or current.get("status") == "True":
            return None
        return True, health.reason, health.message
    if health.state in (NOT_READY, GONE):
        if current is not None and current.get("status") == "False" and current.get("reason") == health.reason:
            return None  # do not rewrite the message (its "for Ns") on every sweep
        return False, health.reason, health.message
    return None  # fenced: the VM is released from the node instead


def host_down_confirmed(vm: Mapping[str, Any], node: str) -> NodeHealth | None:
    """The evidence that releases a VM of a deleted node: its host-down annotation names the node."""
    if ((vm.get("metadata") or {}).get("annotations") or {}).get(HOST_DOWN_ANNOTATION) != node:
        return None
    return NodeHealth(FENCED, "HostDownConfirmed",
                      f"node {node} was deleted and its machine confirmed down: the evidence is the annotation "
                      f"{HOST_DOWN_ANNOTATION}={node} on the VM")
