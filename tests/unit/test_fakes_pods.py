"""FakeKube's pods behave like the API server's where the VM pod logic relies on it, and
kube.api_error_message reads the API server's refusal."""

from __future__ import annotations

import json

import pytest

from failovervm import labels
from failovervm.kube import ApiException, api_error_message
from tests.fakes import FakeKube


def pod(name: str = "p", ns: str = "ns", **lbls: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": dict(lbls)},
            "spec": {"containers": [{"name": "vm", "image": "x"}]}}


def test_create_get_list_patch_delete() -> None:
    kube = FakeKube()
    created = kube.create_pod(pod("a", **{labels.VM_UID_LABEL: "u1"}))
    assert created["metadata"]["uid"] and created["status"] == {"phase": "Pending"}
    with pytest.raises(ApiException) as exc:
        kube.create_pod(pod("a"))
    assert exc.value.status == 409
    kube.create_pod(pod("b", ns="other", **{labels.VM_UID_LABEL: "u2"}))
    assert [p["metadata"]["name"] for p in kube.list_pods(None, f"{labels.VM_UID_LABEL}=u1")] == ["a"]
    assert [p["metadata"]["name"] for p in kube.list_pods("other")] == ["b"]
    patched = kube.patch_pod("ns", "a", {"metadata": {"labels": {labels.ROLE_LABEL: "running"}}})
    assert patched is not None and patched["metadata"]["labels"][labels.ROLE_LABEL] == "running"
    assert kube.patch_pod("ns", "gone", {"metadata": {}}) is None
    with pytest.raises(ApiException) as exc:
        kube.patch_pod("ns", "a", {"metadata": {"resourceVersion": "1", "labels": {}}})
    assert exc.value.status == 409
    # A uid precondition deletes only that pod, never its replacement of the same name.
    assert not kube.delete_pod("ns", "a", grace_period=0, uid="another")
    assert kube.delete_pod("ns", "a", grace_period=0, uid=created["metadata"]["uid"])
    assert kube.get_pod("ns", "a") is None and not kube.delete_pod("ns", "a")


def test_the_scheduler_controls() -> None:
    kube = FakeKube()
    kube.create_pod(pod("a"))
    kube.pod_unschedulable("ns", "a", "0/2 nodes are available: 2 Insufficient memory.")
    cond = kube.pods["ns", "a"]["status"]["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    bound = kube.bind_pod("ns", "a", "n1")
    assert bound["spec"]["nodeName"] == "n1" and bound["status"]["conditions"][0]["status"] == "True"


def test_api_error_message_is_the_api_servers() -> None:
    quota = ApiException(status=403, reason="Forbidden")
    quota.body = json.dumps({"kind": "Status", "message": 'pods "fvm-a" is forbidden: exceeded quota: q, requested: '
                             "requests.memory=288Mi, used: requests.memory=0, limited: requests.memory=256Mi"})
    assert api_error_message(quota).startswith('pods "fvm-a" is forbidden: exceeded quota: q')
    assert api_error_message(ApiException(status=500, reason="Internal Server Error")) == "Internal Server Error"
    garbage = ApiException(status=422, reason="Unprocessable")
    garbage.body = "<html>"
    assert api_error_message(garbage) == "Unprocessable"
