"""Which reconcile failures the agent counts as errors."""

from __future__ import annotations

from collections.abc import Callable

import libvirt
import pytest

from failovervm.agent.domains import DomainError
from failovervm.agent.libvirt_domains import LibvirtDomainManager
from failovervm.agent.main import domain_vanished

HVM = "<os><type>hvm</type></os>"


def libvirt_error(call: Callable[[LibvirtDomainManager], object]) -> DomainError:
    """The error a real libvirt (the test:///default driver) raises for `call`, as the agent's
    DomainManager passes it on."""
    dm = LibvirtDomainManager(libvirt.open("test:///default"), owns_connection=True)
    try:
        with pytest.raises(DomainError) as err:
            call(dm)
    finally:
        dm.close()
    return err.value


def test_a_domain_that_vanished_mid_reconcile_is_a_race_not_an_error() -> None:
    """A migration with UNDEFINE_SOURCE removes the domain while its lifecycle events queue
    reconciles: libvirt then answers VIR_ERR_NO_DOMAIN. That was an ERROR with a traceback and a
    reconcile-error count on every migration."""
    def start_a_vanished_domain(dm: LibvirtDomainManager) -> None:
        dom = dm.define(f"<domain type='test'><name>vanishing</name><memory>1024</memory>{HVM}</domain>")
        dm.clear_leftover(dom)  # removed meanwhile, as a migration with UNDEFINE_SOURCE does
        dm.start(dom)

    assert domain_vanished(libvirt_error(start_a_vanished_domain))


def test_other_failures_stay_errors() -> None:
    bad_xml = "<domain type='test'><name>x</name><memory>not-a-number</memory></domain>"
    assert not domain_vanished(libvirt_error(lambda dm: dm.define(bad_xml)))
    assert not domain_vanished(RuntimeError("apiserver: 503"))
