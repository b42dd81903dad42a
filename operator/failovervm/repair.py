"""Level-triggered repair: what follows from status, re-derived from what is there now.

Placement, a migration's outcome, a release and a deletion each take more than one write (status,
then the node label and the agent finalizer; the VM, then its FailoverVMMigration). A process
killed between two writes leaves a state that no event will ever complete. These pure functions say
what the rest must be, given the part written first (status is always written first, and it is
the truth); the controller's repair (controller/repairs.py) applies them on a timer and at start-up.

No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from failovervm import labels
from failovervm import migration as mg


def vm_metadata_patch(meta: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metadata merge patch that makes a VM's node label and agent finalizer follow its status
    (None: nothing to change).

    - placed (status.nodeName): label failovervm.io/node = that node (its agent finds its VMs by
      it), and the agent finalizer (the domain is never left behind by a deletion); a VM being
      deleted only gets its label (no finalizer can be added any more);
    - not placed: no node label (a release writes the label off first, so this only completes it)."""
    node = status.get("nodeName")
    current = (meta.get("labels") or {}).get(labels.VM_NODE)
    patch: dict[str, Any] = {}
    if node and current != node:
        patch["labels"] = {labels.VM_NODE: str(node)}
    elif not node and current is not None:
        patch["labels"] = {labels.VM_NODE: None}
    fins = list(meta.get("finalizers") or [])
    if node and labels.AGENT_FINALIZER not in fins and not meta.get("deletionTimestamp"):
        patch["finalizers"] = [*fins, labels.AGENT_FINALIZER]
    return patch or None


@dataclass(frozen=True)
class Outcome:
    """How an orphaned migration ended, as the VM's status shows it."""

    phase: str
    reason: str
    message: str


ORPHANED = "OwnerLost"


def orphaned_migration_outcome(mig: Mapping[str, Any], vm: Mapping[str, Any] | None) -> Outcome | None:
    """A FailoverVMMigration that says Running (the source agent took it) while the VM no longer
    names it in status.migration: the agent recorded the outcome on the VM and died before it wrote
    the migration (or the VM is gone). Nobody owns it any more; the VM's status says how it ended:

    - the VM runs on the migration's target (with the target VF): Succeeded;
    - the VM is still on the source node: Failed;
    - the VM is gone or elsewhere: Failed.

    None while the VM still names this migration (its source agent owns it: it records the outcome,
    or after a restart finds it out from libvirt) and for any other phase (the controller drives
    those)."""
    if mg.phase(mig) != mg.RUNNING:
        return None
    name = mig["metadata"]["name"]
    st = mig.get("status") or {}
    source, target = st.get("sourceNode"), st.get("targetNode")
    if vm is None:
        return Outcome(mg.FAILED, ORPHANED, "the FailoverVM no longer exists")
    vst = vm.get("status") or {}
    if (vst.get("migration") or {}).get("name") == name:
        return None
    node = vst.get("nodeName")
    target_claim = (st.get("targetVF") or {}).get("claimName")
    if node and node == target and (not target_claim or (vst.get("vf") or {}).get("claimName") == target_claim):
        return Outcome(mg.SUCCEEDED, "", f"migrated from {source} to {target} (recorded by the controller: the "
                       "source agent moved the VM's status and stopped before it finished the migration)")
    where = f"the VM is on {node}" if node else "the VM is not placed on any node"
    return Outcome(mg.FAILED, ORPHANED, f"the source agent on {source} released the VM without recording the "
                   f"outcome here; {where}")


def claim_released_by_cleanup(claim: Mapping[str, Any], migration: str, keep: set[str]) -> bool:
    """Whether the cleanup of `migration` may delete this VFClaim of its VM: not one in `keep` (the
    VM's running VF, the target of the migration that locks the VM now), and not another
    migration's target reservation: a migration that has just created its claim may not have
    recorded it on the VM yet. Those are left to the orphaned-claim sweep, which waits out a grace
    period and then looks at what the VM refers to."""
    spec = claim.get("spec") or {}
    if claim["metadata"]["name"] in keep:
        return False
    other = spec.get("migration")
    return not (spec.get("purpose") == "MigrationTarget" and other and other != migration)


# A VM whose source node was fenced while its migration ran (the source agent had taken it): the
# VM may run on the target already, so it stays locked with this condition until the target's agent
# finds the domain running there (and records the migration's success), instead of being released
# for a cold start elsewhere (a second copy).
FENCED_DURING_MIGRATION = "FencedDuringMigration"


def own_claim(claims: Iterable[Mapping[str, Any]], vm: Mapping[str, Any], node: str, purpose: str,
              migration: str | None) -> Mapping[str, Any] | None:
    """A VFClaim on `node` that this VM already holds for the same purpose (and migration): a
    placement or target reservation whose pass died after creating the claim and before recording
    it. Taking it up again keeps the VM from holding two VFs until the orphaned-claim sweep."""
    uid = vm["metadata"]["uid"]
    for claim in claims:
        spec = claim.get("spec") or {}
        if ((spec.get("owner") or {}).get("uid") == uid and spec.get("node") == node
                and spec.get("purpose", "Running") == purpose and spec.get("migration") == migration
                and not claim["metadata"].get("deletionTimestamp")):
            return claim
    return None


DISK_LOCKED = "DiskLocked"


def start_failure(error: str) -> tuple[str, str]:
    """The reason and message of a failed domain start. QEMU's image locking refusing a disk (another
    process, most likely a second copy of the VM on another node, writes it) is the last line of
    defence against two copies: it gets a reason of its own (DiskLocked), not StartFailed."""
    if 'write" lock' in error or "Failed to get shared" in error or "another process using the image" in error:
        return DISK_LOCKED, (f"QEMU refused a disk that another process holds (a second copy of this VM on "
                             f"another node?); not started: {error}")
    return "StartFailed", error


def lock_for_target_ready(mig: Mapping[str, Any], vm: Mapping[str, Any]) -> dict[str, Any] | None:
    """The VM's lock fields a TargetReady migration implies, when the controller's second write
    (VM.status.migration: Scheduling -> TargetReady, which hands the migration to the source agent)
    was lost: the migration already says TargetReady with its target VF, the VM's lock still says
    Scheduling. None when nothing is to be written."""
    if mg.phase(mig) != mg.TARGET_READY:
        return None
    lock = (vm.get("status") or {}).get("migration") or {}
    if lock.get("name") != mig["metadata"]["name"] or lock.get("state") != mg.SCHEDULING:
        return None
    st = mig.get("status") or {}
    vf = st.get("targetVF") or {}
    if not st.get("targetNode") or not vf.get("claimName"):
        return None
    return {"state": mg.TARGET_READY, "targetNode": st["targetNode"], "targetPciAddress": vf.get("pciAddress"),
            "targetClaim": vf["claimName"]}
