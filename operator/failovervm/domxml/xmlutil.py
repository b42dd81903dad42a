"""Small lxml helpers shared by the device builders. No XML is ever built from strings."""

from __future__ import annotations

from typing import Final

from lxml import etree

#: Parser for XML that comes from outside (libvirt, users): no entities, no network, no DTD.
SAFE_PARSER: Final = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_blank_text=True
)


def element(tag: str, text: str | None = None, /, **attrs: str | None) -> etree._Element:
    """Create ``<tag attrs...>text</tag>``; attributes whose value is ``None`` are left out."""
    el = etree.Element(tag)
    _fill(el, text, attrs)
    return el


def sub(parent: etree._Element, tag: str, text: str | None = None, /, **attrs: str | None) -> etree._Element:
    """Append ``<tag attrs...>text</tag>`` to ``parent`` and return it (``None`` attributes left out)."""
    el = etree.SubElement(parent, tag)
    _fill(el, text, attrs)
    return el


def _fill(el: etree._Element, text: str | None, attrs: dict[str, str | None]) -> None:
    for key, value in attrs.items():
        if value is not None:
            el.set(key, value)
    if text is not None:
        el.text = text


def parse_xml(xml: str | bytes) -> etree._Element:
    """Parse an XML document with :data:`SAFE_PARSER`; raise :class:`ValueError` if it is not XML."""
    try:
        return etree.fromstring(xml.encode("utf-8") if isinstance(xml, str) else xml, SAFE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc


def to_xml(el: etree._Element) -> str:
    """Serialise ``el`` as pretty-printed unicode XML (no declaration), ending in a newline."""
    return etree.tostring(el, encoding="unicode", pretty_print=True)
