"""The SR-IOV VF NIC: the transient member of the failover team."""

from __future__ import annotations

from lxml import etree

from ..names import STANDBY_ALIAS, VF_ALIAS
from ..spec import PCIAddress
from ..xmlutil import element, sub


def build_vf_interface(vf: PCIAddress, mac: str, *, standby_alias: str = STANDBY_ALIAS) -> etree._Element:
    """``<interface type='hostdev' managed='yes'>`` for VF ``vf`` with ``<teaming type='transient'/>``.

    QEMU unplugs this device before a migration and re-plugs one on the destination;
    ``persistent=`` must name the virtio standby's alias (libvirt does not check it on
    ``attach --config``: see :func:`failovervm.domxml.builder.check_teaming`).
    """
    el = element("interface", type="hostdev", managed="yes")
    sub(el, "mac", address=mac)
    source = sub(el, "source")
    sub(source, "address", type="pci", **vf.xml_attrs())
    sub(el, "teaming", type="transient", persistent=standby_alias)
    sub(el, "alias", name=VF_ALIAS)
    return el
