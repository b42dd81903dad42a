"""Which reconcile failures the agent counts as errors."""

from __future__ import annotations

import libvirt
import pytest

from failovervm.agent.main import domain_vanished


def test_a_domain_that_vanished_mid_reconcile_is_a_race_not_an_error() -> None:
    """A migration with UNDEFINE_SOURCE removes the domain while its lifecycle events queue
    reconciles: libvirt then answers VIR_ERR_NO_DOMAIN. That was an ERROR with a traceback and a
    reconcile-error count on every migration."""
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError) as gone:
            conn.lookupByName("no-such-domain")
    finally:
        conn.close()
    assert domain_vanished(gone.value)


def test_other_failures_stay_errors() -> None:
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError) as bad:
            conn.defineXML("<domain type='test'><name>x</name><memory>not-a-number</memory></domain>")
    finally:
        conn.close()
    assert not domain_vanished(bad.value)
    assert not domain_vanished(RuntimeError("apiserver: 503"))
