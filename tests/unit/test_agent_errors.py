"""Which reconcile failures the agent counts as errors."""

from __future__ import annotations

from collections.abc import Callable

import libvirt
import pytest

from failovervm.agent.main import domain_vanished


def libvirt_error(call: Callable[[libvirt.virConnect], object]) -> libvirt.libvirtError:
    """The error a real libvirt (the test:///default driver) raises for `call`."""
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError) as err:
            call(conn)
    finally:
        conn.close()
    return err.value


def test_a_domain_that_vanished_mid_reconcile_is_a_race_not_an_error() -> None:
    """A migration with UNDEFINE_SOURCE removes the domain while its lifecycle events queue
    reconciles: libvirt then answers VIR_ERR_NO_DOMAIN. That was an ERROR with a traceback and a
    reconcile-error count on every migration."""
    assert domain_vanished(libvirt_error(lambda conn: conn.lookupByName("no-such-domain")))


def test_other_failures_stay_errors() -> None:
    bad_xml = "<domain type='test'><name>x</name><memory>not-a-number</memory></domain>"
    assert not domain_vanished(libvirt_error(lambda conn: conn.defineXML(bad_xml)))
    assert not domain_vanished(RuntimeError("apiserver: 503"))
