"""The sandbox: a real local cluster (etcd, kube-apiserver, kube-controller-manager and one
libvirtd/QEMU host per node) for trying the operator and for its tests.

SR-IOV VFs are simulated in the sandbox (a sysfs-shaped tree); everything else is real.
"""
