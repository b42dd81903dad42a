"""Label, annotation and finalizer names the operator and the sandbox agree on."""

PREFIX = "failovervm.io"

# Node annotations (set by the sandbox, or by an admin / the agent on real clusters).
LIBVIRT_URI = f"{PREFIX}/libvirt-uri"
SYSFS_ROOT = f"{PREFIX}/sysfs-root"
ACCEL = f"{PREFIX}/accel"
SIMULATED_VFS = f"{PREFIX}/simulated-vfs"

# Node label marking sandbox nodes.
SANDBOX_NODE = f"{PREFIX}/sandbox-node"

# FailoverVM label naming its node, so agents can watch only their own VMs.
VM_NODE = f"{PREFIX}/node"
