"""Multi-tenant safety on the sandbox (issue #14, docs/security.md): two tenant namespaces with
their own users under real RBAC (`kubectl --as`, the chart's tenant roles aggregated into edit),
each attack of the issue tried as a tenant would and refused at apply time, by the apiserver or
by the agent with a message naming the rule; the legitimate uses still work. And the webhook's
certificate, re-issued while the controller runs, is served without a restart."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography import x509

from failovervm import labels, webhookcerts
from failovervm_sandbox.binaries import binary_path
from tests.conftest import REPO, TEST_IMAGES_DIR, Sandbox, make_namespace, wait_for
from tests.e2e.helpers import (
    apply,
    condition,
    domains_on,
    events,
    get_vm,
    halt,
    pool_manifest,
    vm_manifest,
    wait_phase,
)
from tests.prereq import require

pytestmark = pytest.mark.e2e
POOL = "tenant-a-pool"
MAC_RANGE = {"first": "52:54:00:aa:00:00", "last": "52:54:00:aa:00:ff"}


def _as(sb: Sandbox, user: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return sb.kubectl("--as", user, *args, check=False, input=input)


def _apply_as(sb: Sandbox, user: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return _as(sb, user, "apply", "-f", "-", input=json.dumps(body))


def _refused(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode != 0, f"accepted:\n{res.stdout}"
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)


@pytest.fixture
def tenants(operator_sandbox: Sandbox) -> Sandbox:
    """team-a (user alice) and team-b (user bob): each user is only bound to Kubernetes' `edit`
    role in their namespace; the chart's tenant roles aggregate the operator's resources into it."""
    sb = operator_sandbox
    require(os.access(binary_path("helm"), os.X_OK), f"helm at {binary_path('helm')}")
    roles = subprocess.run([str(binary_path("helm")), "template", "fvm", str(REPO / "charts" / "failovervm-operator"),
                            "--kube-version", "1.36.0", "--show-only", "templates/tenant-rbac.yaml"],
                           capture_output=True, text=True, check=True)
    sb.kubectl("apply", "-f", "-", input=roles.stdout)
    for ns, tenant, user in (("team-a", "a", "alice"), ("team-b", "b", "bob")):
        make_namespace(sb, ns)
        sb.kubectl("label", "namespace", ns, f"tenant={tenant}", "--overwrite")
        sb.kubectl("-n", ns, "create", "rolebinding", f"{user}-edit", "--clusterrole=edit", f"--user={user}",
                   check=False)
        wait_for(lambda u=user, n=ns: _as(sb, u, "auth", "can-i", "create", "failovervms.failovervm.io", "-n", n)
                 .stdout.strip() == "yes", 60, what=f"{user} may create FailoverVMs in {ns} (role aggregation)")
    pool = pool_manifest(POOL, sb.data["bridge"], pfs=("sbxpf1",))
    pool["spec"].update(namespaceSelector={"matchLabels": {"tenant": "a"}}, macRange=MAC_RANGE)
    apply(sb, pool, pool_manifest("open-pool", sb.data["bridge"], pfs=("sbxpf0",)))
    wait_for(lambda: ((sb.kubectl_json("get", "vfpool", POOL).get("status") or {}).get("totals") or {}).get("free"),
             60, what=f"free VFs in {POOL}")
    return sb


def test_tenants_reach_only_their_own_disks_pools_and_macs(tenants: Sandbox) -> None:
    sb = tenants
    a_dir, b_dir = f"{TEST_IMAGES_DIR}/team-a", f"{TEST_IMAGES_DIR}/team-b"

    # -- legitimate: alice's VM from her own directory, on the pool her namespace may use -----------------
    ok = vm_manifest("web", "team-a", POOL, network={"pool": POOL, "mac": "52:54:00:aa:00:10"})
    assert _apply_as(sb, "alice", ok).returncode == 0
    gen = vm_manifest("gen", "team-a", POOL)  # no MAC: one from the pool's range
    assert _apply_as(sb, "alice", gen).returncode == 0
    running = wait_phase(sb, "team-a", "web", "Running", timeout=120)
    assert wait_phase(sb, "team-a", "gen", "Running", timeout=120)["status"]["mac"].startswith("52:54:00:aa:00:")

    # -- another tenant's disk, kernel, initrd or backing file: refused at apply, naming field and rule ---
    rule = "namespace 'team-a' may only use <storage root>/team-a/"
    _refused(_apply_as(sb, "alice", vm_manifest("steal", "team-a", POOL, disks=[
        {"name": "boot", "path": f"{b_dir}/halt.img", "readOnly": True}])), "spec.disks[boot].path", rule)
    _refused(_apply_as(sb, "alice", vm_manifest("steal", "team-a", POOL, kernel=f"{a_dir}/halt.img",
                                                initrd=f"{b_dir}/halt.img")), "spec.initrd", rule)
    _refused(_apply_as(sb, "alice", vm_manifest("steal", "team-a", POOL, disks=[
        {"name": "boot", "path": f"{a_dir}/top.qcow2", "format": "qcow2",
         "backingChain": [{"path": "/etc/shadow", "format": "raw"}]}])), "spec.disks[boot].backingChain[0].path", rule)
    _refused(_apply_as(sb, "alice", vm_manifest("steal", "team-a", POOL, disks=[
        {"name": "boot", "path": f"{a_dir}/x.img", "backingChain": [{"path": f"{a_dir}/halt.img"}]}])),
        "backingChain needs format qcow2")

    # -- a pool another tenant's namespace selects; a MAC outside the range or already on the pool -------
    _refused(_apply_as(sb, "bob", vm_manifest("in", "team-b", POOL)), "spec.network.pool",
             f"VFPool '{POOL}' may not be used from namespace 'team-b'", "spec.namespaceSelector")
    gateway = vm_manifest("gw", "team-a", POOL, network={"pool": POOL, "mac": "52:54:00:00:00:01"})
    _refused(_apply_as(sb, "alice", gateway), "spec.network.mac", "outside the MAC range", "spec.macRange")
    dup = vm_manifest("dup", "team-a", POOL, network={"pool": POOL, "mac": "52:54:00:AA:00:10"})
    _refused(_apply_as(sb, "alice", dup), "spec.network.mac", "already used in VFPool", "team-a/web")
    # ... while bob's own VM on the open pool may reuse that MAC: another L2 segment.
    assert _apply_as(sb, "bob", vm_manifest("own", "team-b", "open-pool", running=False,
                                            network={"pool": "open-pool", "mac": "52:54:00:aa:00:10"})).returncode == 0

    # -- status, nodes and pools are the operator's: the apiserver refuses the tenant --------------------
    _refused(_as(sb, "alice", "-n", "team-a", "patch", "fvm", "web", "--subresource=status", "--type=merge",
                 "-p", '{"status":{"nodeName":"sandbox-node-3"}}'), "forbidden")
    _refused(_as(sb, "alice", "annotate", "node", running["status"]["nodeName"], "--overwrite",
                 f"{labels.LIBVIRT_URI}=qemu+tcp://attacker.example/system"), "forbidden")
    _refused(_as(sb, "alice", "patch", "vfpool", POOL, "--type=merge", "-p", '{"spec":{"namespaceSelector":{}}}'),
             "forbidden")

    # -- the qcow2 header attack: a guest wrote a qcow2 header naming another tenant's image onto its raw
    # disk, and the spec is switched to qcow2. Admission cannot see the header; the agent reads it before
    # define and refuses, and the domain never exists.
    evil = f"{a_dir}/evil.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", f"{b_dir}/halt.img", "-F", "raw", evil],
                   check=True)
    assert _apply_as(sb, "alice", vm_manifest("evil", "team-a", POOL, disks=[
        {"name": "boot", "path": evil, "format": "qcow2", "bootOrder": 1}])).returncode == 0

    def refused() -> dict[str, Any] | None:
        vm = get_vm(sb, "team-a", "evil")
        c = condition(vm, "Ready")
        return vm if c and c["reason"] == "ImageRefused" else None

    vm = wait_for(refused, 120, what="the agent refusing evil.img")
    assert f"names backing file '{b_dir}/halt.img', which backingChain does not declare" in \
        condition(vm, "Ready")["message"]
    assert events(sb, "team-a", "ImageRefused", "evil")
    assert not [d for node in sb.nodes for d in domains_on(sb, node["node"]) if "evil" in d]
    os.unlink(evil)


def _lease(sb: Sandbox, name: str) -> dict[str, Any]:
    res = sb.kubectl("get", "maclease", name, "-o", "json", check=False)
    return dict(json.loads(res.stdout)) if res.returncode == 0 else {}


def test_two_vms_admitted_with_one_mac_never_both_run(tenants: Sandbox) -> None:
    """Admission checks a MAC against a watch cache, so two creates at the same moment can both pass.
    The MACLease taken before placement is the lock: whichever way admission went, one VM runs with
    the MAC and the other waits (Pending, MACConflict, a Warning Event) until the first is deleted.
    Also the deterministic case: a lease another VM holds (as a lost race leaves it) keeps a VM off
    its node until that VM is deleted."""
    sb = tenants

    # -- the race, as two users' creates at the same instant -----------------------------------------------
    # Whether both pass admission depends on timing (two kubectl processes, ~60 ms of webhook each):
    # up to 5 pairs, until one pair is both admitted; a pair where admission saw the first refuses
    # the second naming the field, and its VM is deleted before the next pair.
    for attempt in range(5):
        mac = f"52:54:00:aa:00:{0x60 + attempt:02x}"
        bodies = [vm_manifest(f"race{attempt}-{i}", "team-a", POOL, network={"pool": POOL, "mac": mac})
                  for i in (1, 2)]
        start = threading.Barrier(2)

        def create(body: dict[str, Any], start: threading.Barrier = start) -> subprocess.CompletedProcess[str]:
            start.wait()
            return _as(sb, "alice", "create", "-f", "-", input=json.dumps(body))

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(create, bodies))
        admitted = [b["metadata"]["name"] for b, r in zip(bodies, results, strict=True) if r.returncode == 0]
        for r in results:
            if r.returncode != 0:  # admission saw the other one after all: it names the field
                assert "spec.network.mac" in r.stderr and "already used in VFPool" in r.stderr, r.stderr
        print(f"pair {attempt + 1}: admitted {admitted}")
        assert admitted
        if len(admitted) == 2 or attempt == 4:
            break
        sb.kubectl("-n", "team-a", "delete", "fvm", *admitted, "--wait=true", "--timeout=120s")
    lease = f"{POOL}.{mac.replace(':', '-')}"
    winner = wait_for(lambda: (_lease(sb, lease).get("spec") or {})
                      .get("owner", {}).get("name"), 60, what=f"MACLease {lease}")
    assert wait_phase(sb, "team-a", winner, "Running", timeout=120)["status"]["mac"] == mac
    losers = [n for n in admitted if n != winner]
    for loser in losers:
        vm = wait_for(lambda n=loser: (lambda v: v if (condition(v, "Scheduled") or {}).get("reason") == "MACConflict"
                                       else None)(get_vm(sb, "team-a", n)), 60, what=f"{loser} MACConflict")
        assert vm["status"]["phase"] == "Pending" and not vm["status"].get("nodeName")
        assert f"FailoverVM team-a/{winner}" in condition(vm, "Scheduled")["message"]
        assert events(sb, "team-a", "MACConflict", loser)
        # never two VMs with that MAC on the segment: the loser has no pod, so no domain either
        selector = f"{labels.VM_UID_LABEL}={vm['metadata']['uid']}"
        assert not sb.kubectl_json("-n", "team-a", "get", "pods", "-l", selector)["items"]
    # the winner deleted: its lease goes with it, and the one that waited runs
    sb.kubectl("-n", "team-a", "delete", "fvm", winner, "--wait=true", "--timeout=120s")
    for loser in losers:
        assert wait_phase(sb, "team-a", loser, "Running", timeout=120)["status"]["mac"] == mac
        owner = sb.kubectl_json("get", "maclease", lease)["spec"]["owner"]
        assert owner["name"] == loser
    for name in admitted:
        sb.kubectl("-n", "team-a", "delete", "fvm", name, "--ignore-not-found", "--wait=true", "--timeout=120s")
    wait_for(lambda: not _lease(sb, lease).get("spec"), 60,
             what=f"MACLease {lease} released")

    # -- a lease another VM holds, whatever admission saw (as a race another replica won leaves it) -------
    mac2 = "52:54:00:aa:00:61"
    holder = vm_manifest("holder", "team-a", POOL, running=False, network={"pool": POOL, "mac": "52:54:00:aa:00:62"})
    apply(sb, holder)
    meta = get_vm(sb, "team-a", "holder")["metadata"]
    lease2 = f"{POOL}.{mac2.replace(':', '-')}"
    apply(sb, {"apiVersion": "failovervm.io/v1alpha1", "kind": "MACLease", "metadata": {"name": lease2},
               "spec": {"pool": POOL, "mac": mac2,
                        "owner": {"namespace": "team-a", "name": "holder", "uid": meta["uid"]}}})
    assert _apply_as(sb, "alice", vm_manifest("late", "team-a", POOL,
                                              network={"pool": POOL, "mac": mac2})).returncode == 0
    vm = wait_for(lambda: (lambda v: v if (condition(v, "Scheduled") or {}).get("reason") == "MACConflict"
                           else None)(get_vm(sb, "team-a", "late")), 60, what="late: MACConflict")
    assert "MACLease " + lease2 in condition(vm, "Scheduled")["message"]
    # Its holder deleted: the lease goes with it (the orphan sweep, unit-tested, would free it after the
    # claims' grace otherwise) and the waiting VM runs with the MAC.
    sb.kubectl("-n", "team-a", "delete", "fvm", "holder", "--wait=true", "--timeout=120s")
    assert wait_phase(sb, "team-a", "late", "Running", timeout=120)["status"]["mac"] == mac2
    assert sb.kubectl_json("get", "maclease", lease2)["spec"]["owner"]["name"] == "late"
    sb.kubectl("-n", "team-a", "delete", "fvm", "late", "--wait=true", "--timeout=120s")


def test_an_agent_migrates_only_to_its_target_nodes_own_libvirt(operator_sandbox: Sandbox) -> None:
    """A target Node's libvirt URI annotation pointing anywhere else is refused with an Event and never
    opened; the VM keeps running where it was."""
    sb = operator_sandbox
    ns = make_namespace(sb, "tenant-dest")
    apply(sb, pool_manifest("open-pool", sb.data["bridge"], pfs=("sbxpf0",)))
    apply(sb, vm_manifest("vm", ns, "open-pool"))
    source = wait_phase(sb, ns, "vm", "Running", timeout=120)["status"]["nodeName"]
    target = next(n["node"] for n in sb.nodes if n["node"] != source)
    original = sb.kubectl_json("get", "node", target)["metadata"]["annotations"][labels.LIBVIRT_URI]
    sb.kubectl("annotate", "node", target, "--overwrite", f"{labels.LIBVIRT_URI}=qemu+tcp://attacker.example/system")
    try:
        apply(sb, {"apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVMMigration",
                   "metadata": {"name": "away", "namespace": ns}, "spec": {"vmName": "vm", "targetNode": target}})

        def finished() -> dict[str, Any] | None:
            m = sb.kubectl_json("-n", ns, "get", "fvmm", "away")
            return m if (m.get("status") or {}).get("phase") in ("Failed", "Succeeded") else None

        mig = wait_for(finished, 120, what="the migration to end")
        assert mig["status"]["phase"] == "Failed" and mig["status"]["reason"] == "DestinationRefused"
        assert "host 'attacker.example' is not one of the node's names or addresses" in mig["status"]["message"]
        assert events(sb, ns, "DestinationRefused", "vm")
        assert wait_phase(sb, ns, "vm", "Running")["status"]["nodeName"] == source
    finally:
        sb.kubectl("annotate", "node", target, "--overwrite", f"{labels.LIBVIRT_URI}={original}")


def _served_serial(port: int, ca: str) -> int:
    with ssl.create_default_context(cafile=ca).wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_the_webhook_certificate_rotates_without_a_restart(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    cert_dir = sb.state_dir / "pki" / "webhook"
    port = int(sb.data["operator"]["webhook_port"])
    pid = sb.data["controller"]["pid"]
    before = _served_serial(port, str(cert_dir / "ca.crt"))
    webhookcerts.reissue(cert_dir, "127.0.0.1")  # what cert-manager does on renewal
    renewed = x509.load_pem_x509_certificate((cert_dir / "tls.crt").read_bytes()).serial_number
    assert renewed != before
    wait_for(lambda: _served_serial(port, str(cert_dir / "ca.crt")) == renewed, 30,
             what="the renewed certificate served")
    # Admission still answers (a refusal from the webhook itself, with the renewed certificate) ...
    ns = make_namespace(sb, "cert-rotation")
    res = sb.kubectl("apply", "-f", "-", check=False, input=json.dumps(
        vm_manifest("bad", ns, "no-such-pool", disks=[{"name": "boot", "path": halt(ns), "readOnly": True}])))
    assert res.returncode != 0 and "spec.network.pool" in res.stderr, res.stderr
    # ... from the same controller process.
    sb.data = json.loads((sb.state_dir / "sandbox.json").read_text())
    assert sb.data["controller"]["pid"] == pid
