"""The node's `vf.failovervm.io/<pool>` extended resources: the desired map and the nodes/status
patch (failovervm.vfresources), and the fake API server's nodes/status merge patch they go through."""

from __future__ import annotations

from typing import Any

import pytest

from failovervm import labels, vfresources
from failovervm.kube import ApiException
from failovervm.vfresources import Change, plan
from tests.fakes import FakeKube
from tests.fakes.kube import node

A, B, C = labels.vf_resource("pool-a"), labels.vf_resource("pool-b"), labels.vf_resource("pool-c")


def _status(capacity: dict[str, Any], allocatable: dict[str, Any] | None = None) -> dict[str, Any]:
    native = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    return {"capacity": {**native, **capacity},
            "allocatable": {**native, **(capacity if allocatable is None else allocatable)}}


def test_resource_name_is_the_fixed_one() -> None:
    assert labels.VF_RESOURCE_DOMAIN == "vf.failovervm.io"
    assert labels.vf_resource("sriov-a") == "vf.failovervm.io/sriov-a"


def test_a_fresh_node_gets_every_selecting_pool_in_capacity_and_allocatable() -> None:
    p = plan({"capacity": {"cpu": "8"}, "allocatable": {"cpu": "8"}}, {"pool-a": 4, "pool-b": 0})
    assert p.patch == {"status": {"capacity": {A: "4", B: "0"}, "allocatable": {A: "4", B: "0"}}}
    assert p.changes == (Change(A, None, 4), Change(B, None, 0))
    assert p.desired == {A: 4, B: 0}
    assert vfresources.describe(p.changes) == f"{A}=4 (was unset), {B}=0 (was unset)"


def test_a_node_that_already_says_so_is_not_written() -> None:
    assert plan(_status({A: "4"}), {"pool-a": 4}).patch is None
    # The same number in another spelling is the same quantity.
    assert plan(_status({A: "4000m"}), {"pool-a": 4}).patch is None
    assert plan(None, {}).patch is None
    assert plan({}, {}).patch is None


def test_only_the_changed_keys_of_the_owned_domain_are_in_the_patch() -> None:
    p = plan(_status({A: "4", B: "2", "example.com/gpu": "1"}), {"pool-a": 5, "pool-b": 2})
    assert p.patch == {"status": {"capacity": {A: "5"}, "allocatable": {A: "5"}}}
    assert p.changes == (Change(A, 4, 5),)
    assert vfresources.describe(p.changes) == f"{A}=5 (was 4)"


def test_pools_that_no_longer_select_the_node_or_are_gone_are_removed() -> None:
    p = plan(_status({A: "4", B: "2", C: "1"}), {"pool-a": 4})
    assert p.patch == {"status": {"capacity": {B: None, C: None}, "allocatable": {B: None, C: None}}}
    assert p.changes == (Change(B, 2, None), Change(C, 1, None))
    assert str(p.changes[0]) == f"{B} removed (was 2)"
    assert plan(_status({A: "4"}), {}).patch == {"status": {"capacity": {A: None}, "allocatable": {A: None}}}


def test_a_kubelet_that_zeroed_them_on_re_registration_is_corrected() -> None:
    p = plan(_status({A: "0", B: "0"}), {"pool-a": 4, "pool-b": 2})
    assert p.patch == {"status": {"capacity": {A: "4", B: "2"}, "allocatable": {A: "4", B: "2"}}}
    assert p.changes == (Change(A, 0, 4), Change(B, 0, 2))


def test_allocatable_is_re_asserted_on_its_own() -> None:
    p = plan(_status({A: "4"}, allocatable={}), {"pool-a": 4})
    assert p.patch == {"status": {"allocatable": {A: "4"}}}
    assert p.changes == (Change(A, 4, 4, ("allocatable",)),)
    assert str(p.changes[0]) == f"{A}=4 (re-asserted in allocatable)"
    p = plan(_status({A: "4"}, allocatable={A: "4", B: "1"}), {"pool-a": 4})
    assert p.patch == {"status": {"allocatable": {B: None}}}


def test_unparseable_values_are_overwritten() -> None:
    p = plan(_status({A: "four"}), {"pool-a": 4})
    assert p.patch == {"status": {"capacity": {A: "4"}, "allocatable": {A: "4"}}}
    assert p.changes == (Change(A, None, 4),)


@pytest.mark.parametrize(("pool", "ok"), [("a", True), ("pool-a", True), ("pool.a", True), ("p" * 63, True),
                                          ("p" * 64, False), ("-a", False), ("a-", False), ("a/b", False)])
def test_pools_whose_name_is_no_resource_name_are_skipped(pool: str, ok: bool) -> None:
    assert vfresources.valid_pool_name(pool) is ok
    p = plan({}, {pool: 2, "pool-a": 1})
    assert p.skipped == (() if ok else (pool,))
    assert (labels.vf_resource(pool) in p.desired) is ok and p.desired[A] == 1


def test_negative_counts_are_advertised_as_zero() -> None:
    assert plan({}, {"pool-a": -1}).desired == {A: 0}


# -- the fake API server's nodes/status patch ---------------------------------------------------------

def test_fake_node_status_patch_merges_only_status_and_null_removes() -> None:
    kube = FakeKube()
    obj = node("n1")
    obj["status"].update(_status({B: "1"}))
    kube.add_node(obj)
    version = kube.nodes["n1"]["metadata"]["resourceVersion"]
    out = kube.patch_node_status("n1", {"metadata": {"labels": {"x": "y"}}, "spec": {"unschedulable": True},
                                        "status": {"capacity": {A: "4", B: None}, "allocatable": {A: "4", B: None}}})
    assert out is not None and out["metadata"]["resourceVersion"] != version
    stored = kube.nodes["n1"]
    assert stored["status"]["capacity"] == {"cpu": "8", "memory": "32Gi", "pods": "110", A: "4"}
    assert stored["status"]["allocatable"][A] == "4" and B not in stored["status"]["allocatable"]
    assert stored["status"]["conditions"] == node("n1")["status"]["conditions"]
    assert stored["spec"] == {} and "x" not in stored["metadata"]["labels"]
    assert kube.patch_node_status("gone", {"status": {"capacity": {A: "1"}}}) is None


def test_fake_node_status_patch_refuses_fractional_extended_resources() -> None:
    kube = FakeKube()
    kube.add_node(node("n1"))
    with pytest.raises(ApiException) as err:
        kube.patch_node_status("n1", {"status": {"capacity": {A: "1500m"}}})
    assert err.value.status == 422 and "capacity" not in kube.nodes["n1"]["status"]
