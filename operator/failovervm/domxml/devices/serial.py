"""Serial port and console."""

from __future__ import annotations

from lxml import etree

from ..xmlutil import element, sub


def build_serial_console(serial_log: str | None) -> list[etree._Element]:
    """``<serial>`` on port 0 plus the ``<console>`` that libvirt ties to it.

    With ``serial_log``, both write to that file with ``append='on'``: without it the
    destination of a migration truncates the log. Otherwise a pty.
    """
    kind = "pty" if serial_log is None else "file"
    serial = element("serial", type=kind)
    console = element("console", type=kind)
    if serial_log is not None:
        sub(serial, "source", path=serial_log, append="on")
        sub(console, "source", path=serial_log, append="on")
    sub(serial, "target", port="0")
    sub(console, "target", type="serial", port="0")
    return [serial, console]
