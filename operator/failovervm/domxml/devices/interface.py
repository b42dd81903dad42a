"""The virtio standby NIC: the persistent member of the failover team."""

from __future__ import annotations

from lxml import etree

from ..names import STANDBY_ALIAS
from ..spec import StandbySpec
from ..xmlutil import element, sub


def build_standby_interface(standby: StandbySpec, mac: str, *, rom_enabled: bool = False) -> etree._Element:
    """``<interface type='bridge|direct|network'>`` with ``<teaming type='persistent'/>``.

    QEMU requires the persistent member to be ``virtio-net``; the guest pairs it
    with the VF by MAC, so ``mac`` must be the VF's MAC too. The option ROM (iPXE)
    is disabled unless ``rom_enabled``: the guest does not network-boot, and an
    idle iPXE costs a lot of CPU.
    """
    el = element("interface", type=standby.type)
    sub(el, "mac", address=mac)
    if standby.type == "bridge":
        sub(el, "source", bridge=standby.source)
    elif standby.type == "direct":
        sub(el, "source", dev=standby.source, mode=standby.mode)
    else:
        sub(el, "source", network=standby.source)
    sub(el, "model", type="virtio")
    sub(el, "teaming", type="persistent")
    if not rom_enabled:
        sub(el, "rom", enabled="no")
    sub(el, "alias", name=STANDBY_ALIAS)
    return el
