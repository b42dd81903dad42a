"""The operator's ownership record in the domain's ``<metadata>``.

``<metadata><fvm:vm xmlns:fvm="..." namespace="ns" name="vm" uid="..."/></metadata>``

Domains without it were not created by the operator and must be left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lxml import etree

from ..names import METADATA_NS, METADATA_PREFIX
from ..xmlutil import element, parse_xml

#: Clark-notation tag of the operator's metadata element.
OWNER_TAG: Final = f"{{{METADATA_NS}}}vm"


@dataclass(frozen=True)
class OwnerRef:
    """The FailoverVM a domain belongs to."""

    namespace: str
    name: str
    uid: str


def build_owner_element(namespace: str, name: str, uid: str, *, vf_node: str | None = None) -> etree._Element:
    """The bare ``<fvm:vm/>`` element, e.g. for ``virDomainSetMetadata(ELEMENT, ..., "fvm", METADATA_NS)``.

    ``vf_node``, if given, records the node whose VF the domain XML refers to.
    """
    el = etree.Element(OWNER_TAG, nsmap={METADATA_PREFIX: METADATA_NS})
    el.set("namespace", namespace)
    el.set("name", name)
    el.set("uid", uid)
    if vf_node is not None:
        el.set("vf-node", vf_node)
    return el


def build_metadata(namespace: str, name: str, uid: str, *, vf_node: str | None = None) -> etree._Element:
    """``<metadata>`` holding the operator's ``<fvm:vm/>`` element."""
    md = element("metadata")
    md.append(build_owner_element(namespace, name, uid, vf_node=vf_node))
    return md


def _find_owner(root: etree._Element) -> etree._Element | None:
    # virDomainGetMetadata(ELEMENT, METADATA_NS) returns the element without its
    # namespace (``<vm namespace=.../>``): accept that form at the top level only.
    if root.tag in (OWNER_TAG, "vm"):
        return root
    if root.tag == "metadata":
        return root.find(OWNER_TAG)
    if root.tag == "domain":
        return root.find(f"metadata/{OWNER_TAG}")
    return None


def parse_owner(xml_or_element: str | bytes | etree._Element) -> OwnerRef | None:
    """Return the owner recorded in a domain's metadata, or ``None`` if there is none.

    Accepts a whole ``<domain>`` (string, bytes or element), its ``<metadata>``, or the
    bare ``<fvm:vm/>`` element, also in the namespace-less form ``<vm .../>`` that
    ``virDomainGetMetadata(VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)`` returns. ``None`` means
    the domain is not the operator's: no record, or one missing a field. Raises
    :class:`ValueError` only for input that is not well-formed XML.
    """
    root = xml_or_element if isinstance(xml_or_element, etree._Element) else parse_xml(xml_or_element)
    owner = _find_owner(root)
    if owner is None:
        return None
    namespace, name, uid = owner.get("namespace"), owner.get("name"), owner.get("uid")
    if not namespace or not name or not uid:
        return None
    return OwnerRef(namespace=namespace, name=name, uid=uid)
