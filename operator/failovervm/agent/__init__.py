"""The per-node agent (a DaemonSet in production): VF inventory and libvirt domains of its node."""
