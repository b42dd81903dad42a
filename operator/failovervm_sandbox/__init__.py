"""The sandbox: a real local cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and one libvirtd/QEMU host per node) for trying the operator and for its tests.

SR-IOV VFs are simulated in the sandbox (a sysfs-shaped tree); everything else is real.

A development tool that ships with the source checkout, not with the product: it imports
`failovervm`, never the other way round (`failovervm sandbox` imports it when that command runs).
"""

from failovervm.errors import FailoverVMError


class SandboxError(FailoverVMError):
    """The sandbox cannot be brought up, inspected or torn down."""
