"""Every name the operator, its agents, the CLI and the sandbox agree on: the API group and
version, labels, annotations and finalizers. Defined here only, imported everywhere else."""

from __future__ import annotations

PREFIX = "failovervm.io"

# The API group and version of the operator's custom resources.
API_GROUP = PREFIX
API_VERSION = "v1alpha1"
API_GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

# Node annotations (set by the sandbox, or by an admin / the agent on real clusters).
LIBVIRT_URI = f"{PREFIX}/libvirt-uri"
# Node annotation: the address of the node's dedicated migration network. Incoming migration streams
# go there (tcp://<address>, the destination QEMU listening on it) instead of the management network.
MIGRATION_ADDRESS = f"{PREFIX}/migration-address"
SYSFS_ROOT = f"{PREFIX}/sysfs-root"
ACCEL = f"{PREFIX}/accel"
SIMULATED_VFS = f"{PREFIX}/simulated-vfs"

# Node label marking sandbox nodes.
SANDBOX_NODE = f"{PREFIX}/sandbox-node"
# Node label marking the sandbox's agent-less nodes (`sandbox up --virtual-nodes`): VFs published,
# no libvirtd, no agent; VMs placed there are never started.
SANDBOX_VIRTUAL_NODE = f"{PREFIX}/sandbox-virtual-node"

# FailoverVM label naming its node, so agents can watch only their own VMs.
VM_NODE = f"{PREFIX}/node"

# FailoverVM annotations.
# evictionStrategy Shutdown: the controller names the node being drained; its agent shuts the VM
# down and releases it from that node, so that it starts again elsewhere.
EVICT_ANNOTATION = f"{PREFIX}/evict"
# `failovervm restart`: a token; the agent restarts the VM once per new token (status.restartedFor).
RESTART_ANNOTATION = f"{PREFIX}/restart"
# On a FailoverVM whose Node was deleted: the name of that node, set by an administrator (or a
# remediation tool) who knows its machine no longer runs the VM. A deleted Node alone is no proof.
HOST_DOWN_ANNOTATION = f"{PREFIX}/host-down"

# FailoverVMMigration labels: the node an evacuation empties, and the VM a migration moves.
EVACUATION_LABEL = f"{PREFIX}/evacuation"
VM_LABEL = f"{PREFIX}/vm"
# On an evacuation migration started for one VM because its pod was evicted (or preempted) on a
# node that is not being emptied: that pod's name. Uncordoning does not stop such a migration.
EVICTED_POD_LABEL = f"{PREFIX}/evicted-pod"

# VM pods (failovervm.vmpod): one pod per VM and node, in the VM's namespace, that makes the VM's
# CPU, memory and VF visible to kube-scheduler, autoscalers and quotas. VM_LABEL names the VM (as on
# migrations), VM_UID_LABEL its uid; ROLE_LABEL says whether the pod stands for where the VM runs
# or for a migration's target (MIGRATION_LABEL names that migration).
VM_UID_LABEL = f"{PREFIX}/vm-uid"
ROLE_LABEL = f"{PREFIX}/role"
ROLE_RUNNING = "running"
ROLE_TARGET = "target"
MIGRATION_LABEL = f"{PREFIX}/migration"
# FailoverVM annotation: the VM's pod on this node was preempted by kube-scheduler (or deleted by the
# taint manager); the VM live-migrates away instead of getting its pod back there.
DISPLACED_ANNOTATION = f"{PREFIX}/displaced-from"

# The label of the per-node drain guard pods of earlier versions (removed on upgrade), and the
# annotation saying what a pod the operator creates is for.
GUARD_LABEL = f"{PREFIX}/guard"
PURPOSE_ANNOTATION = f"{PREFIX}/purpose"

# Finalizers: the controller's (Kopf's persistence finalizer) and the agent's, which holds a
# FailoverVM until its node's agent has removed the domain.
CONTROLLER_FINALIZER = f"{PREFIX}/controller"
AGENT_FINALIZER = f"{PREFIX}/agent"

# The ClusterKopfPeering object the controller replicas share (created by the chart and the sandbox).
PEERING_NAME = "failovervm"

# The operator image as the Helm chart publishes it: the VM pods' holder image unless the controller
# is told another (--vm-pod-image; the chart passes the controller's own).
DEFAULT_IMAGE = "ghcr.io/failovervm/failovervm-operator:0.1.0"

# Prefix of the annotations in which Kopf keeps the controller's handler progress and diff base.
KOPF_ANNOTATION_PREFIX = f"controller.{PREFIX}"

# The sandbox's default state directory (its kubeconfig, logs and the VMs' serial console logs,
# which `failovervm console` reads).
SANDBOX_STATE_DIR = "/var/lib/failovervm-sandbox"

# The extended resource through which a node advertises one VFPool's free VFs to kube-scheduler
# (Node status capacity/allocatable), and which every VM pod requests one unit of.
VF_RESOURCE_DOMAIN = f"vf.{PREFIX}"


def vf_resource(pool: str) -> str:
    """`vf.failovervm.io/<pool>`: VFPool names are at most 63 characters, a valid resource name."""
    return f"{VF_RESOURCE_DOMAIN}/{pool}"

# The FailoverVM validating webhook is called for creates and for updates that change the spec only
# (a CEL matchCondition, the same in the chart and the sandbox): the controller's and the agents'
# label, finalizer and annotation writes (three or more per VM over its life) would otherwise each
# cost the API server a webhook round trip that admits them unchanged (controller.admission).
VALIDATE_SPEC_CHANGES = ("request.operation != 'UPDATE' || !has(object.spec) || !has(oldObject.spec)"
                         " || object.spec != oldObject.spec")
