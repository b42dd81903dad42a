"""What the controller asks the API server to watch (Kopf settings made by its startup handler)."""

from __future__ import annotations

import subprocess
import sys

import kopf
from kopf._cogs.structs import references

from failovervm import labels
from failovervm.controller import main as controller_main

POD = references.Resource("", "v1", "pods", kind="Pod", singular="pod", namespaced=True,
                          verbs=["list", "watch", "patch"])
NODE = references.Resource("", "v1", "nodes", kind="Node", singular="node", namespaced=False,
                           verbs=["list", "watch", "patch"])


def _configured() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    memo.args = controller_main.ControllerArgs(
        kubeconfig=None, storage_roots=[], webhook_host=None, webhook_port=0, webhook_cert_dir=None,
        webhook_managed=False, metrics_port=0, health_port=None)
    controller_main.configure(settings=settings, memo=memo)
    return settings


def test_pods_are_filtered_by_the_api_server() -> None:
    """Only VM pods reach the controller: the API server filters the watch by the VM label, so
    the cluster's other pods are never sent, parsed or remembered (issue #12)."""
    assert _configured().watching.label_selectors.collect(POD) == [labels.VM_UID_LABEL]


def test_nodes_are_watched_whole() -> None:
    assert _configured().watching.label_selectors.collect(NODE) == []


def test_the_controller_does_not_load_xml_or_crypto_libraries() -> None:
    """The controller never builds domain XML and gets its webhook certificate from files: lxml and
    cryptography (about 12 MiB of every replica's memory) stay unloaded."""
    code = ("import sys; import failovervm.controller.main; "
            "print(sorted(m for m in ('lxml', 'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
