"""The agent's boundary over libvirt: DomainManager (agent/domains.py) and its libvirt adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import libvirt
import pytest

from failovervm.agent import domains, libvirt_domains
from failovervm.agent.domains import DomainError, DomainNotFound, DomainState, MigrationRequest, PausedReason
from failovervm.agent.libvirt_domains import LibvirtDomainManager

AGENT = Path(domains.__file__).parent
LIBVIRT_MODULES = {"libvirt", "libvirt_qemu", "libvirtaio"}
HVM = "<os><type>hvm</type></os>"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", ["reconcile.py", "migrate.py", "domains.py"])
def test_agent_logic_does_not_import_libvirt(module: str) -> None:
    """libvirt-python is used behind DomainManager only (libvirt_domains.py, connection.py)."""
    assert imported_modules(AGENT / module) & LIBVIRT_MODULES == set()


def test_project_states_are_libvirts() -> None:
    for state in DomainState:
        assert state == getattr(libvirt, f"VIR_DOMAIN_{state.name}"), state
    for reason in PausedReason:
        assert reason == getattr(libvirt, f"VIR_DOMAIN_PAUSED_{reason.name}"), reason


def test_libvirt_errors_leave_the_adapter_with_their_message_and_kind() -> None:
    conn = libvirt.open("test:///default")
    dm = LibvirtDomainManager(conn)
    try:
        assert dm.lookup("no-such-domain") is None
        bad = "<domain type='test'><name>x</name><memory>not-a-number</memory></domain>"
        with pytest.raises(libvirt.libvirtError) as raw:
            conn.defineXML(bad)
        with pytest.raises(DomainError) as ours:
            dm.define(bad)
        assert str(ours.value) == str(raw.value) and ours.value.code == raw.value.get_error_code()
        assert type(ours.value) is DomainError

        dom = dm.define(f"<domain type='test'><name>gone</name><memory>1024</memory>{HVM}</domain>")
        assert (dom.name, dm.is_active(dom), dm.state(dom).state) == ("gone", False, DomainState.SHUTOFF)
        dm.clear_leftover(dom)
        with pytest.raises(DomainNotFound, match="Domain not found"):
            dm.start(dom)
    finally:
        conn.close()


def test_a_domain_runs_and_stops_through_the_adapter() -> None:
    conn = libvirt.open("test:///default")
    dm = LibvirtDomainManager(conn)
    try:
        dom = dm.define(f"<domain type='test'><name>runs</name><memory>1024</memory>{HVM}</domain>")
        dm.start(dom)
        assert dm.is_active(dom) and dm.state(dom).state == DomainState.RUNNING
        assert "<name>runs</name>" in dm.xml(dom, inactive=True) and not dm.has_vf(dom)
        assert dm.stop(dom, timeout=0) == "destroyed" and dm.stop(dom) == "inactive"
        dm.clear_leftover(dom)
        with pytest.raises(DomainError, match="failed to parse xml document"):
            dm.open_remote("test:///nonexistent-dir/no-such.xml")  # a libvirt that cannot be opened
    finally:
        conn.close()


def test_migration_request_in_libvirt_terms() -> None:
    base = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    assert libvirt_domains.migration_flags(MigrationRequest("<d/>", "<p/>", transport="tcp")) == base
    assert libvirt_domains.migration_flags(MigrationRequest("<d/>", "<p/>", transport="tls")) == (
        base | libvirt.VIR_MIGRATE_TLS)
    req = MigrationRequest(destination_xml="<dest/>", persistent_xml="<persist/>", transport="tls")
    assert libvirt_domains.migration_params(req) == {libvirt.VIR_MIGRATE_PARAM_DEST_XML: "<dest/>",
                                                     libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: "<persist/>"}
    req = MigrationRequest("<dest/>", "<persist/>", bandwidth_mibps=100)
    assert libvirt_domains.migration_params(req)[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 100


def test_migration_policy_in_libvirt_terms() -> None:
    """Auto-converge, post-copy and parallel connections are flags; the connections, the stream's
    own endpoint (the dedicated migration address) and where the destination listens are params."""
    req = MigrationRequest("<dest/>", "<persist/>", auto_converge=True, post_copy=True, parallel_connections=4,
                           stream_uri="tcp://10.0.9.2", listen_address="10.0.9.2", tls_destination="n2")
    flags = libvirt_domains.migration_flags(req)
    for flag in (libvirt.VIR_MIGRATE_AUTO_CONVERGE, libvirt.VIR_MIGRATE_POSTCOPY, libvirt.VIR_MIGRATE_PARALLEL):
        assert flags & flag
    params = libvirt_domains.migration_params(req)
    assert params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] == 4
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://10.0.9.2"
    assert params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] == "10.0.9.2"
    assert params[libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION] == "n2"
    plain = libvirt_domains.migration_flags(MigrationRequest("<d/>", "<p/>"))
    assert not plain & (libvirt.VIR_MIGRATE_AUTO_CONVERGE | libvirt.VIR_MIGRATE_POSTCOPY | libvirt.VIR_MIGRATE_PARALLEL)
