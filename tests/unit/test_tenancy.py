"""Pools per namespace, MAC ranges and uniqueness per pool, migration destinations (issue #14)."""

from __future__ import annotations

from typing import Any

import pytest

from failovervm.controller import admission
from failovervm.controller.cache import pool_summary, vm_keys
from failovervm.controller.context import ControllerContext, ControllerSettings
from failovervm.controller.tenancy import MACS, NAMESPACES, POOLS
from failovervm.tenancy import DestinationRefused, MacRange, check_destination, pool_refusals, selector_matches
from tests.fakes import FakeKube


@pytest.mark.parametrize("selector,labels,want", [
    (None, {}, True),
    ({}, {"a": "b"}, True),
    ({"matchLabels": {"tenant": "a"}}, {"tenant": "a"}, True),
    ({"matchLabels": {"tenant": "a"}}, {"tenant": "b"}, False),
    ({"matchExpressions": [{"key": "tenant", "operator": "In", "values": ["a", "b"]}]}, {"tenant": "b"}, True),
    ({"matchExpressions": [{"key": "tenant", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "tenant", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "tenant", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "tenant", "operator": "Bogus"}]}, {"tenant": "a"}, False),
])
def test_selector_matches_like_the_api_server(selector: Any, labels: dict[str, str], want: bool) -> None:
    assert selector_matches(selector, labels) is want


def test_a_mac_range_hands_out_stable_unicast_addresses_inside_it() -> None:
    rng = MacRange.parse({"first": "52:54:00:10:00:00", "last": "52:54:00:10:00:ff"})
    macs = {rng.generate(f"uid-{i}") for i in range(50)}
    assert all(m in rng and m.startswith("52:54:00:10:00:") for m in macs) and len(macs) > 30
    assert rng.generate("uid-1") == rng.generate("uid-1")
    assert "52:54:00:11:00:00" not in rng and "52-54-00-10-00-07" in rng
    across = MacRange.parse({"first": "00:ff:ff:ff:ff:ff", "last": "02:00:00:00:00:00"})  # 01:... is multicast
    assert all(not int(across.generate(f"u{i}")[:2], 16) & 1 for i in range(20))
    with pytest.raises(ValueError, match="multicast"):
        MacRange.parse({"first": "01:00:00:00:00:00", "last": "01:00:00:00:00:03"})


def _pool(name: str = "p", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"pfNames": ["pf0"], **spec}}


def _vm(ns: str, name: str, pool: str = "p", mac: str | None = None, uid: str | None = None) -> dict[str, Any]:
    network: dict[str, Any] = {"pool": pool}
    if mac:
        network["mac"] = mac
    return {"metadata": {"namespace": ns, "name": name, "uid": uid or f"uid-{ns}-{name}"},
            "spec": {"cpu": 1, "memory": "32Mi", "network": network}}


def test_pool_refusals_name_the_field_and_the_rule() -> None:
    pool = _pool(namespaceSelector={"matchLabels": {"tenant": "a"}},
                 macRange={"first": "52:54:00:10:00:00", "last": "52:54:00:10:ff:ff"})
    assert pool_refusals(_vm("team-a", "v", mac="52:54:00:10:00:01"), pool, {"tenant": "a"}) == []
    errors = pool_refusals(_vm("team-b", "v", mac="52:54:00:00:00:01"), pool, {"tenant": "b"})
    assert errors[0].startswith("spec.network.pool: VFPool 'p' may not be used from namespace 'team-b'")
    assert "spec.namespaceSelector" in errors[0]
    assert errors[1].startswith("spec.network.mac: 52:54:00:00:00:01 is outside the MAC range")
    assert "macRange" in errors[1]


@pytest.fixture(params=["api", "indexes"])
def ctx(request: pytest.FixtureRequest) -> ControllerContext:
    """The admission context reading the cluster from the API (until Kopf's indexes are bound) or
    from the indexes, which must give the same answers."""
    kube = FakeKube()
    kube.add_namespace("team-a", {"tenant": "a"})
    kube.add_namespace("team-b", {"tenant": "b"})
    kube.add_pool(_pool("p", namespaceSelector={"matchLabels": {"tenant": "a"}},
                        macRange={"first": "52:54:00:10:00:00", "last": "52:54:00:10:ff:ff"}))
    kube.add_pool(_pool("open"))
    kube.add_vm(_vm("team-a", "held", mac="52:54:00:10:00:01"))
    kube.add_vm(_vm("team-b", "other", pool="open", mac="52:54:00:10:00:02"))
    c = ControllerContext(ControllerSettings(), kube)
    if request.param == "indexes":
        def index(pairs: list[tuple[Any, Any]]) -> dict[Any, list[Any]]:
            out: dict[Any, list[Any]] = {}
            for k, v in pairs:
                out.setdefault(k, []).append(v)
            return out
        c.tenancy.bind({
            POOLS: index([(p["metadata"]["name"], pool_summary(p)) for p in kube.pools.values()]),
            NAMESPACES: index([(n, ns["metadata"]["labels"]) for n, ns in kube.namespaces.items()]),
            MACS: index([kv for vm in kube.vms.values() for kv in vm_keys(vm).items()]),
        })
        kube.calls.clear()
    return c


def test_admission_keeps_tenants_to_their_pools_and_macs(ctx: ControllerContext) -> None:
    check = admission._validate_vm_sync
    assert check(ctx, _vm("team-a", "new", mac="52:54:00:10:00:09")) == []
    assert check(ctx, _vm("team-a", "gen")) == []  # no MAC: one is generated inside the range
    refused = check(ctx, _vm("team-b", "intruder", mac="52:54:00:10:00:09"))
    assert refused == ["spec.network.pool: VFPool 'p' may not be used from namespace 'team-b' (its "
                       "spec.namespaceSelector does not select it)"]
    dup = check(ctx, _vm("team-a", "dup", mac="52:54:00:10:00:01"))
    assert dup == ["spec.network.mac: 52:54:00:10:00:01 is already used in VFPool 'p' by FailoverVM team-a/held"]
    # Unique per pool, not across pools (each pool is its own L2 segment) ...
    assert check(ctx, _vm("team-b", "again", pool="open", mac="52:54:00:10:00:01")) == []
    # ... and another tenant's VM is not named.
    assert check(ctx, _vm("team-a", "x", pool="open", mac="52:54:00:10:00:02")) == [
        "spec.network.mac: 52:54:00:10:00:02 is already used in VFPool 'open' by a FailoverVM of another namespace"]
    if ctx.tenancy.indexes:
        assert not [c for c in ctx.kube.calls if c.method.startswith("list")], "no LIST per admission request"


def test_a_generated_mac_comes_from_the_pools_range(ctx: ControllerContext) -> None:
    mac = ctx.vm_mac(_vm("team-a", "gen"))
    assert mac.startswith("52:54:00:10:") and mac == ctx.vm_mac(_vm("team-a", "gen"))
    assert int(ctx.vm_mac(_vm("team-b", "o", pool="open"))[:2], 16) & 0b11 == 0b10  # locally administered


NODE = {"metadata": {"name": "node-2"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"},
                                                                 {"type": "Hostname", "address": "node-2.lan"}]}}


@pytest.mark.parametrize("uri", ["qemu+tls://10.0.0.2/system", "qemu+tls://node-2.lan:16514/system",
                                 "qemu+tls://node-2/system"])
def test_allowed_destinations(uri: str) -> None:
    assert check_destination(uri, NODE, allow_tcp=False) == uri


@pytest.mark.parametrize("uri,allow_tcp,match", [
    ("qemu+tcp://10.0.0.2/system", False, "scheme 'qemu\\+tcp' is not allowed"),
    ("qemu+ssh://root@10.0.0.2/system", True, "scheme 'qemu\\+ssh'"),
    ("qemu+ext:///system?command=/bin/sh", True, "scheme 'qemu\\+ext'"),
    ("qemu:///system", True, "scheme 'qemu'"),
    ("qemu+tls://10.0.0.3/system", False, "host '10.0.0.3' is not one of the node's"),
    ("qemu+tls://attacker.example/system", False, "not one of the node's"),
    ("qemu+tls://10.0.0.2/system?no_verify=1", False, "no user, query"),
    ("qemu+tls://10.0.0.2/system?pkipath=/tmp/x", False, "no user, query"),
    ("qemu+tls://10.0.0.2/session", False, "only the /system driver"),
    ("qemu+tls://10.0.0.2:99999/system", False, "malformed"),
])
def test_refused_destinations(uri: str, allow_tcp: bool, match: str) -> None:
    with pytest.raises(DestinationRefused, match=match):
        check_destination(uri, NODE, allow_tcp=allow_tcp)


def test_tcp_only_where_allowed() -> None:
    assert check_destination("qemu+tcp://10.0.0.2/system", NODE, allow_tcp=True)


def test_generated_macs_of_a_small_range_do_not_collide(ctx: ControllerContext) -> None:
    """A range of 16 addresses for 12 VMs: each gets its own, stable across calls."""
    ctx.kube.add_pool(_pool("tiny", macRange={"first": "52:54:00:bb:00:00", "last": "52:54:00:bb:00:0f"}))
    ctx.tenancy.indexes.pop(POOLS, None)  # read the new pool from the API
    macs = [ctx.vm_mac(_vm("team-a", f"v{i}", pool="tiny")) for i in range(12)]
    assert len(set(macs)) == 12 and all(m.startswith("52:54:00:bb:00:0") for m in macs)
    assert ctx.vm_mac(_vm("team-a", "v3", pool="tiny")) == macs[3]
