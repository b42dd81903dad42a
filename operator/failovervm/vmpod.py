"""The VM pod: what makes a FailoverVM count on its node (pure; no I/O).

Every FailoverVM that should run has one pod on the node it runs on (and, during a migration, a
second one on the target), in the VM's namespace and controller-owned by the FailoverVM. The domain
itself runs in the node's libvirtd, not in the pod: the pod only *holds* the VM's CPU, memory and VF
for kube-scheduler, cluster-autoscaler, Karpenter, ResourceQuota, LimitRange and Pod Security, the
way KubeVirt's virt-launcher pod does. Its one container runs `failovervm hold` (sleeps until
SIGTERM) from the operator image and passes Pod Security `restricted`.

An unbound pod (no `spec.nodeName`) asks kube-scheduler where the VM should run; the controller then
takes a free VF of the VM's pool on the node the pod was bound to. A *bound* pod (`spec.nodeName`
set by the operator) stands for a VM that already runs on that node: after an upgrade from a
version without VM pods, or when its pod was deleted behind the operator's back. See
docs/capacity.md.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from failovervm import jsoncopy, labels
from failovervm.labels import API_GROUP_VERSION, DEFAULT_IMAGE, vf_resource
from failovervm.nodehealth import OUT_OF_SERVICE_TAINT
from failovervm.quantity import MIB, parse_quantity, parse_quantity_decimal
from failovervm.scheduling import EVACUATION_TAINT_KEYS, Toleration

__all__ = [
    "CONTAINER",
    "DISPLACING_REASONS",
    "HOLD_COMMAND",
    "NEVER_TOLERATED",
    "SAFE_TO_EVICT",
    "PodSettings",
    "build",
    "disruption_reason",
    "is_terminating",
    "node_of",
    "owned_by",
    "pod_name",
    "requests",
    "role_of",
    "summary",
    "tolerations",
    "unschedulable",
]

CONTAINER = "vm"
HOLD_COMMAND = ("failovervm", "hold")
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
NON_ROOT_UID = 65532

# Taints a VM pod never tolerates, whatever the FailoverVM's tolerations say: the node is being
# emptied (cordon, cluster-autoscaler, Karpenter) or fenced. A VM placed there would only have to
# leave again (or be restarted elsewhere), and Karpenter does not evict pods that tolerate its
# `karpenter.sh/disrupted` taint, so it would terminate the node with the VM on it.
NEVER_TOLERATED: tuple[tuple[str, str], ...] = (
    *((key, "NoSchedule") for key in sorted(EVACUATION_TAINT_KEYS)),
    (OUT_OF_SERVICE_TAINT, "NoExecute"),
)

# NoExecute taints the node lifecycle controller sets on an unreachable or not-ready node. Tolerated
# forever (no tolerationSeconds), as DaemonSet pods do: the taint manager must never delete a VM pod
# there, because the VM may well still run. What a node failure means for its VMs is the
# operator's decision (failovervm.nodehealth: nothing moves until the node is fenced).
NODE_FAILURE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


@dataclass(frozen=True)
class PodSettings:
    """How VM pods are built (the controller's --vm-pod-image and --vm-overhead-* flags)."""

    image: str = DEFAULT_IMAGE
    # What QEMU and libvirt use on top of the guest's own vCPUs and memory (docs/capacity.md).
    overhead_cpu: str = "100m"
    overhead_memory: str = "160Mi"

    def __post_init__(self) -> None:
        for value in (self.overhead_cpu, self.overhead_memory):
            if parse_quantity_decimal(value) < 0:
                raise ValueError(f"a VM overhead must not be negative: {value!r}")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def pod_name(vm: Mapping[str, Any], migration: Mapping[str, Any] | None = None) -> str:
    """`fvm-<vm>-<hash>`, at most 63 characters: the VM's running pod is named after the VM's uid
    (and, once the VM was taken off a node, the time it was: see below), a migration's target pod
    after the VM's and the migration's uids. A retry (or a second controller) computes the same
    name and gets AlreadyExists instead of making a second pod.

    A VM taken off its node (evictionStrategy Shutdown, a fenced node) gets a pod of a new name for
    its next placement: its Scheduled condition turned False then, and that transition's time is
    part of the name. `kubectl drain` retries an eviction answered 429 by pod *name*; with the old
    name reused, the drain of the VM's old node would evict the VM's next pod, on another node,
    again and again (it chased the VM across the cluster)."""
    meta = vm["metadata"]
    if migration is not None:
        key = f"{meta['uid']}/{migration['metadata']['uid']}"
    else:
        key = str(meta["uid"])
        scheduled = next((c for c in (vm.get("status") or {}).get("conditions") or []
                          if c.get("type") == "Scheduled"), None)
        if scheduled is not None and scheduled.get("status") == "False" and scheduled.get("lastTransitionTime"):
            key += f"/unplaced-since/{scheduled['lastTransitionTime']}"
    stem = f"fvm-{meta['name']}"[:54].rstrip("-.")
    return f"{stem}-{_short_hash(key)}"


def _cpu_text(cores: Decimal) -> str:
    millis = int((cores * 1000).to_integral_value(ROUND_CEILING))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _memory_text(size: int) -> str:
    return f"{size // MIB}Mi" if size % MIB == 0 else str(size)


def requests(vm: Mapping[str, Any], settings: PodSettings) -> dict[str, str]:
    """The VM pod's resource requests: the guest's vCPUs and memory plus the per-VM overhead, and
    one VF of its pool (the extended resource the node's agent advertises)."""
    spec = vm.get("spec") or {}
    cpu = Decimal(int(spec.get("cpu", 1))) + parse_quantity_decimal(settings.overhead_cpu)
    memory = parse_quantity(spec.get("memory", "128Mi")) + parse_quantity(settings.overhead_memory)
    pool = str((spec.get("network") or {}).get("pool", ""))
    return {"cpu": _cpu_text(cpu), "memory": _memory_text(memory), vf_resource(pool): "1"}


def _tolerates_taint(tol: Toleration, key: str, effect: str) -> bool:
    """Whether `tol` tolerates a taint with this key and effect, whatever its value (conservative:
    an Equal toleration counts even when its value might differ from the taint's)."""
    if tol.effect and tol.effect != effect:
        return False
    return tol.key == key or (not tol.key and tol.operator == "Exists")


def tolerations(vm: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The FailoverVM's tolerations minus those that would tolerate a taint in NEVER_TOLERATED,
    without tolerationSeconds (documented as ignored for VMs: the operator, not the taint manager,
    moves them), plus the node-failure tolerations."""
    out: list[dict[str, Any]] = []
    for raw in (vm.get("spec") or {}).get("tolerations") or []:
        tol = Toleration.from_k8s(raw)
        if any(_tolerates_taint(tol, key, effect) for key, effect in NEVER_TOLERATED):
            continue
        entry = {k: v for k, v in raw.items() if k != "tolerationSeconds" and v not in (None, "")}
        if entry not in out:
            out.append(entry)
    out.extend({"key": key, "operator": "Exists", "effect": "NoExecute"} for key in NODE_FAILURE_TAINTS)
    return out


def _node_selector(vm: Mapping[str, Any], pool: Mapping[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The pool's and the VM's nodeSelector: merged, and as node affinity expressions where they name
    the same label with different values (both must hold; nothing can match, which kube-scheduler
    then says)."""
    merged = {str(k): str(v) for k, v in ((pool.get("spec") or {}).get("nodeSelector") or {}).items()}
    extra: list[dict[str, Any]] = []
    for key, value in ((vm.get("spec") or {}).get("nodeSelector") or {}).items():
        key, value = str(key), str(value)
        if key in merged and merged[key] != value:
            extra.append({"key": key, "operator": "In", "values": [value]})
        else:
            merged[key] = value
    return merged, extra


def _require_on_every_term(affinity: dict[str, Any], expressions: Iterable[dict[str, Any]],
                           fields: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Add required node affinity (label expressions and field selectors): nodeSelectorTerms are
    ORed, so every term gets them."""
    expressions, fields = list(expressions), list(fields)
    if not expressions and not fields:
        return affinity
    node_aff = affinity.setdefault("nodeAffinity", {})
    required = node_aff.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    out = []
    for term in terms:
        term = dict(term)
        if expressions:
            term["matchExpressions"] = [*(term.get("matchExpressions") or []), *copy.deepcopy(expressions)]
        if fields:
            term["matchFields"] = [*(term.get("matchFields") or []), *copy.deepcopy(fields)]
        out.append(term)
    required["nodeSelectorTerms"] = out
    return affinity


def _pod_labels(vm: Mapping[str, Any], role: str, migration: Mapping[str, Any] | None) -> dict[str, str]:
    """The FailoverVM's own labels (so pod affinity and anti-affinity can select VMs by them), with
    the operator's failovervm.io/ labels on top."""
    meta = vm["metadata"]
    out = {k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith(f"{labels.PREFIX}/")}
    out.update({labels.VM_LABEL: meta["name"], labels.VM_UID_LABEL: meta["uid"], labels.ROLE_LABEL: role})
    if migration is not None:
        out[labels.MIGRATION_LABEL] = migration["metadata"]["name"]
    return out


def build(vm: Mapping[str, Any], pool: Mapping[str, Any], settings: PodSettings, *,
          node: str | None = None, migration: Mapping[str, Any] | None = None,
          source_node: str | None = None, target_node: str | None = None) -> dict[str, Any]:
    """The VM pod of `vm` (a FailoverVM as a dict) from pool `pool` (its VFPool).

    - `node`: a bound pod (spec.nodeName) for a VM that already runs there; kube-scheduler is not
      asked, so it carries no nodeSelector or affinity (a kubelet would refuse a pod whose selector
      no longer matches the node the VM runs on).
    - otherwise an unbound pod for kube-scheduler, with the VM's and the pool's nodeSelector and
      the VM's affinity; for a `migration` target, required node affinity keeps it off
      `source_node`, or pins it to `target_node` (the migration's spec.targetNode).
    """
    meta = vm["metadata"]
    spec = vm.get("spec") or {}
    role = labels.ROLE_TARGET if migration is not None else labels.ROLE_RUNNING
    what = (f"the migration target of FailoverVM {meta['namespace']}/{meta['name']} "
            f"({migration['metadata']['name']})" if migration is not None
            else f"FailoverVM {meta['namespace']}/{meta['name']}")
    reqs = requests(vm, settings)
    pod_spec: dict[str, Any] = {
        "containers": [{
            "name": CONTAINER,
            "image": settings.image,
            "imagePullPolicy": "IfNotPresent",
            "command": list(HOLD_COMMAND),
            # Limits equal to the requests: Kubernetes requires it for the extended resource; for CPU
            # and memory it keeps a namespace's LimitRange default limits (which may be below a VM's
            # memory) off the pod, satisfies quotas on limits.*, and makes the pod Guaranteed (the
            # last a kubelet evicts). They only bound the holder process: the guest's vCPUs and
            # memory are QEMU's, in libvirt's cgroup, not in the pod's.
            "resources": {"requests": reqs, "limits": dict(reqs)},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "runAsUser": NON_ROOT_UID,
                "runAsGroup": NON_ROOT_UID,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }],
        "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # 0: a delete (an eviction the webhook let through, a preemption, the operator's own) removes
        # the pod at once. The holder has nothing to clean up, the domain does not depend on it, and
        # the pod's deterministic name is free again for the next one.
        "terminationGracePeriodSeconds": 0,
        "restartPolicy": "Always",
        "tolerations": tolerations(vm),
    }
    if spec.get("priorityClassName"):
        pod_spec["priorityClassName"] = str(spec["priorityClassName"])
    if node is not None:
        pod_spec["nodeName"] = node
    else:
        selector, extra = _node_selector(vm, pool)
        if selector:
            pod_spec["nodeSelector"] = selector
        # The node's name itself (metadata.name, as DaemonSet pods are pinned), not a label.
        fields = ([{"key": "metadata.name", "operator": "In", "values": [target_node]}] if target_node
                  else [{"key": "metadata.name", "operator": "NotIn", "values": [source_node]}] if source_node else [])
        affinity = _require_on_every_term(copy.deepcopy(dict(spec.get("affinity") or {})), extra, fields)
        if affinity:
            pod_spec["affinity"] = affinity
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(vm, migration),
            "namespace": meta["namespace"],
            "labels": _pod_labels(vm, role, migration),
            "annotations": {
                SAFE_TO_EVICT: "true",
                labels.PURPOSE_ANNOTATION: f"Holds the CPU, memory and VF of {what} on its node; the domain runs "
                                           "in the node's libvirtd. Evicting it live-migrates the VM away.",
            },
            "ownerReferences": [{
                "apiVersion": API_GROUP_VERSION, "kind": "FailoverVM", "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": pod_spec,
    }


# -- reading VM pods ---------------------------------------------------------------------------------
def owned_by(pod: Mapping[str, Any], vm: Mapping[str, Any]) -> bool:
    """The pod is one of `vm`'s: same namespace, its vm-uid label, and the VM as its controller owner
    (labels alone are anyone's to set)."""
    pmeta, vmeta = pod.get("metadata") or {}, vm["metadata"]
    if pmeta.get("namespace") != vmeta.get("namespace"):
        return False
    if (pmeta.get("labels") or {}).get(labels.VM_UID_LABEL) != vmeta.get("uid"):
        return False
    return any(ref.get("uid") == vmeta.get("uid") and ref.get("controller")
               for ref in pmeta.get("ownerReferences") or [])


def role_of(pod: Mapping[str, Any]) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(labels.ROLE_LABEL) or "")


def node_of(pod: Mapping[str, Any]) -> str | None:
    """The node the pod is bound to (None: kube-scheduler has not bound it yet)."""
    return (pod.get("spec") or {}).get("nodeName") or None


def is_terminating(pod: Mapping[str, Any]) -> bool:
    """Being deleted, or finished (a kubelet eviction leaves a Failed pod behind): not a holder any more."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp")) or \
        (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def _condition(pod: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def unschedulable(pod: Mapping[str, Any]) -> str | None:
    """kube-scheduler's message while it cannot bind the pod (PodScheduled=False, reason
    Unschedulable), else None."""
    cond = _condition(pod, "PodScheduled")
    if node_of(pod) or cond is None or cond.get("status") != "False" or cond.get("reason") != "Unschedulable":
        return None
    return str(cond.get("message") or "kube-scheduler cannot place the pod")


# DisruptionTarget reasons after which the VM must leave the node rather than get its pod back: a
# higher-priority pod needs the room, or the node has a NoExecute taint the VM does not tolerate.
DISPLACING_REASONS = frozenset({"PreemptionByScheduler", "DeletionByTaintManager"})


def disruption_reason(pod: Mapping[str, Any]) -> str | None:
    """The reason of the pod's DisruptionTarget=True condition (why it was deleted), if any."""
    cond = _condition(pod, "DisruptionTarget")
    return str(cond.get("reason") or "") if cond is not None and cond.get("status") == "True" else None


def summary(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the controller keeps of a VM pod in its in-memory index."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {k: jsoncopy.copy(meta[k]) for k in ("name", "namespace", "uid", "labels", "ownerReferences",
                                                          "creationTimestamp", "deletionTimestamp", "resourceVersion")
                     if k in meta},
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {"phase": status.get("phase"), "conditions": jsoncopy.copy(status.get("conditions") or [])},
    }
