"""The sandbox's standby network: one L2 segment, a bridge per node, a libvirt network per node.

Production puts each VM's virtio standby on the same L2 as the VFs (a bridge on the PF, macvtap
on the PF, or a libvirt network that maps to one of those on every host). The sandbox models it:

    fabric bridge <bridge>          (stands in for the switch the PFs hang off; one L2 segment)
      |- veth <bridge>n<i>f <-> <bridge>n<i>u -- node bridge <bridge>n<i>   (node i's "PF" side)
                                                   |- tap of each standby NIC on node i

and each node's libvirtd defines the libvirt network ``fvm-standby`` (forward mode bridge) on its
own node bridge, so a VFPool with ``standby: {type: network, source: fvm-standby}`` lands every
standby on its node's bridge, as the same network name would on real hosts. Guests on one node
and guests on different nodes share the L2 segment; after a live migration the guest's tap moves
to the target node's bridge and the guest's announce (VIRTIO_NET_F_GUEST_ANNOUNCE) re-teaches
the fabric. The VFs themselves are simulated, so no traffic ever flows over a VF here.

The fabric bridge itself is still usable directly (``type: bridge, source: <bridge>``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lxml import etree

from failovervm_sandbox import SandboxError

STANDBY_NETWORK = "fvm-standby"


def node_bridge(fabric: str, index: int) -> str:
    name = f"{fabric}n{index}"
    if len(name) + 1 > 15:  # + the veth suffix; Linux interface names are at most 15 characters
        raise SandboxError(f"bridge name {fabric!r} is too long for per-node bridges (max {13 - len(str(index))})")
    return name


def _exists(dev: str) -> bool:
    return Path("/sys/class/net", dev).exists()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def ensure_bridge(name: str) -> bool:
    """Create a Linux bridge (up). True if created now."""
    if _exists(name):
        return False
    _ip("link", "add", "name", name, "type", "bridge")
    _ip("link", "set", name, "up")
    return True


def ensure_node_bridge(fabric: str, index: int) -> str:
    """Node i's bridge, uplinked to the fabric bridge through a veth pair. Idempotent."""
    br = node_bridge(fabric, index)
    ensure_bridge(br)
    up, down = f"{br}u", f"{br}f"
    if not _exists(up):
        _ip("link", "add", up, "type", "veth", "peer", "name", down)
    _ip("link", "set", up, "master", br)
    _ip("link", "set", down, "master", fabric)
    for dev in (up, down):
        _ip("link", "set", dev, "up")
    return br


def remove_link(dev: str) -> None:
    """Delete a network device if it exists (best effort, for teardown)."""
    if _exists(dev):
        subprocess.run(["ip", "link", "del", dev], check=False, capture_output=True)


def remove_node_bridge(fabric: str, index: int) -> None:
    br = node_bridge(fabric, index)
    for dev in (f"{br}u", br):  # deleting one end of a veth pair removes both
        remove_link(dev)


def network_xml(name: str, bridge: str) -> str:
    net = etree.Element("network")
    etree.SubElement(net, "name").text = name
    etree.SubElement(net, "forward", mode="bridge")
    etree.SubElement(net, "bridge", name=bridge)
    return etree.tostring(net, encoding="unicode")


def ensure_libvirt_network(uri: str, bridge: str, name: str = STANDBY_NETWORK) -> None:
    """Define, autostart and start the node's libvirt network on its bridge. Idempotent."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            net = conn.networkDefineXML(network_xml(name, bridge))
        if net.bridgeName() != bridge:
            raise SandboxError(f"libvirt network {name} on {uri} uses bridge {net.bridgeName()}, not {bridge}")
        if not net.autostart():
            net.setAutostart(1)
        if not net.isActive():
            net.create()
    finally:
        conn.close()
