"""Migration policies (#15): which FailoverMigrationPolicy applies to a VM (precedence, tie-break),
the effective settings recorded on the migration when it starts, and the bounded end the source
agent enforces (CompletionTimeout, NoProgress, post-copy), with the shared fakes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from failovervm import cli_ops, labels
from failovervm import migration as mg
from failovervm import migrationpolicy as mp
from failovervm.agent import migrate
from failovervm.agent.domains import JobProgress, OperationInvalid
from failovervm.controller import migrations as cm
from failovervm.controller.policies import ALL, IndexedPolicies, StaticPolicies, for_migration, summary
from tests.fakes import FakeKube
from tests.unit.conftest import MakeControllerContext
from tests.unit.test_agent_migrate import DNAME, TARGET_URI, mig_status, run, setup, vm_status

MiB = 1 << 20


def policy(name: str, ns: dict[str, Any] | None = None, vm: dict[str, Any] | None = None,
           **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(spec)
    if ns is not None:
        body["namespaceSelector"] = ns
    if vm is not None:
        body["vmSelector"] = vm
    return {"metadata": {"name": name}, "spec": body}


# -- selection -----------------------------------------------------------------------------------------
def test_label_selectors_match_like_kubernetes() -> None:
    lbl = {"tier": "db", "env": "prod"}
    assert mp.selector_matches(None, lbl) and mp.selector_matches({}, {})
    assert mp.selector_matches({"matchLabels": {"tier": "db"}}, lbl)
    assert not mp.selector_matches({"matchLabels": {"tier": "web"}}, lbl)
    exprs = [{"key": "env", "operator": "In", "values": ["prod", "stage"]},
             {"key": "team", "operator": "DoesNotExist"}, {"key": "tier", "operator": "Exists"},
             {"key": "env", "operator": "NotIn", "values": ["dev"]}]
    assert mp.selector_matches({"matchExpressions": exprs}, lbl)
    assert not mp.selector_matches({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]},
                                   lbl)
    assert not mp.selector_matches({"matchExpressions": [{"key": "x", "operator": "In", "values": ["a"]}]}, lbl)


def test_the_most_specific_policy_wins_then_vm_labels_then_the_name() -> None:
    ns_labels, vm_labels = {"tenant": "a", "env": "prod"}, {"app": "db", "size": "xl"}
    catch_all = policy("catch-all")
    by_ns = policy("by-ns", ns={"matchLabels": {"tenant": "a"}})
    by_vm = policy("by-vm", vm={"matchLabels": {"app": "db"}})
    both = policy("both", ns={"matchLabels": {"tenant": "a"}}, vm={"matchLabels": {"app": "db"}})
    other = policy("other", ns={"matchLabels": {"tenant": "b"}}, vm={"matchLabels": {"app": "db", "size": "xl"}})
    assert mp.select_policy([], ns_labels, vm_labels) is None
    assert mp.select_policy([catch_all], ns_labels, vm_labels) is catch_all  # empty selectors: everything
    assert mp.select_policy([catch_all, by_ns], ns_labels, vm_labels) is by_ns
    # one requirement each: the VM selector's is the more specific (KubeVirt's rule)
    assert mp.select_policy([by_ns, by_vm, catch_all], ns_labels, vm_labels) is by_vm
    assert mp.select_policy([by_ns, by_vm, both, other], ns_labels, vm_labels) is both  # other does not match
    # a full tie: the first name in alphabetical order
    twin = policy("a-twin", vm={"matchExpressions": [{"key": "size", "operator": "Exists"}]})
    assert mp.select_policy([by_vm, twin], ns_labels, vm_labels) is twin
    gone = {**both, "metadata": {"name": "both", "deletionTimestamp": "x"}}
    assert mp.select_policy([gone, by_ns], ns_labels, vm_labels) is by_ns


def test_defaults_keep_todays_behaviour_but_bounded() -> None:
    eff = mp.effective_policy(None, 256 * MiB)
    assert eff == mp.EffectivePolicy(name="", bandwidth_mibps=None, completion_timeout_per_gib=150,
                                     completion_timeout_seconds=150, progress_timeout_seconds=150,
                                     allow_auto_converge=False, allow_post_copy=False, parallel_connections=1)
    assert mp.effective_policy(None, 4 * 1024 * MiB).completion_timeout_seconds == 600  # per GiB
    assert mp.effective_policy(None, 1536 * MiB).completion_timeout_seconds == 225


def test_effective_policy_takes_the_policy_then_the_migrations_own_bandwidth() -> None:
    p = policy("fast", bandwidthPerMigrationMiBps=64, completionTimeoutPerGiB=20, progressTimeoutSeconds=7,
               allowAutoConverge=True, allowPostCopy=True, postCopyAfterIterations=3, parallelConnections=1,
               maxDowntimeMs=500)
    eff = mp.effective_policy(p, 2048 * MiB)
    assert (eff.name, eff.bandwidth_mibps, eff.completion_timeout_seconds, eff.progress_timeout_seconds) == (
        "fast", 64, 40, 7)
    assert eff.allow_auto_converge and eff.allow_post_copy and eff.post_copy_after_iterations == 3
    assert eff.max_downtime_ms == 500
    assert mp.effective_policy(p, 2048 * MiB, {"bandwidthMiBps": 8}).bandwidth_mibps == 8
    status = eff.to_status()
    assert status == {"name": "fast", "bandwidthMiBps": 64, "completionTimeoutPerGiB": 20,
                      "completionTimeoutSeconds": 40, "progressTimeoutSeconds": 7, "allowAutoConverge": True,
                      "allowPostCopy": True, "postCopyAfterIterations": 3, "parallelConnections": 1,
                      "maxDowntimeMs": 500}
    assert mp.EffectivePolicy.from_status(status) == eff
    assert mp.EffectivePolicy.from_status(None) is None


def test_policies_come_from_the_indexes() -> None:
    source = IndexedPolicies({ALL: [summary("p1", {"vmSelector": {"matchLabels": {"app": "db"}}}, False)]},
                             {"ns": [{"tenant": "a"}]})
    assert source.namespace_labels("ns") == {"tenant": "a"} and source.namespace_labels("other") == {}
    vm = {"metadata": {"name": "vm", "namespace": "ns", "labels": {"app": "db"}}, "spec": {"memory": "64Mi"}}
    assert for_migration(source, vm, {"spec": {}}).name == "p1"
    assert for_migration(StaticPolicies(), vm, {"spec": {}}).name == ""


# -- the monitor ---------------------------------------------------------------------------------------
def test_completion_timeout_aborts_without_post_copy() -> None:
    m = mp.Monitor(mp.EffectivePolicy(completion_timeout_seconds=10, progress_timeout_seconds=100))
    assert m.observe(1, 1000, 1).action == mp.CONTINUE
    d = m.observe(10, 500, 5)
    assert (d.action, d.reason) == (mp.ABORT, mp.COMPLETION_TIMEOUT) and "10s" in d.message
    assert m.observe(11, 400, 6).action == mp.CONTINUE  # decided once


def test_no_progress_aborts_when_remaining_data_stops_shrinking() -> None:
    m = mp.Monitor(mp.EffectivePolicy(completion_timeout_seconds=100, progress_timeout_seconds=5))
    assert m.observe(0, 1000, 1).action == mp.CONTINUE
    assert m.observe(3, 800, 2).action == mp.CONTINUE  # progress at 3 s
    assert m.observe(7, 900, 3).action == mp.CONTINUE  # worse, but only 4 s since the lowest
    d = m.observe(8, 850, 4)
    assert (d.action, d.reason) == (mp.ABORT, mp.NO_PROGRESS) and "800 bytes" in d.message


def test_auto_converge_raising_its_throttle_is_progress() -> None:
    m = mp.Monitor(mp.EffectivePolicy(completion_timeout_seconds=100, progress_timeout_seconds=5,
                                      allow_auto_converge=True))
    assert m.observe(0, 12288, 1, 0).action == mp.CONTINUE  # a sample between two passes: a low bar
    assert m.observe(4, 900_000, 3, 20).action == mp.CONTINUE
    assert m.observe(8, 700_000, 6, 40).action == mp.CONTINUE  # throttled harder at 8 s: progress
    assert m.observe(12, 600_000, 9, 40).action == mp.CONTINUE  # 4 s since
    d = m.observe(13, 650_000, 10, 40)  # 5 s without a lower sample or a higher throttle
    assert (d.action, d.reason) == (mp.ABORT, mp.NO_PROGRESS)
    assert "12288 bytes nor auto-converge's throttle risen above 40%" in d.message


def test_post_copy_instead_of_aborting_and_after_iterations() -> None:
    m = mp.Monitor(mp.EffectivePolicy(completion_timeout_seconds=10, allow_post_copy=True))
    assert m.observe(10, 100, 2).action == mp.START_POST_COPY
    m.switched()
    assert m.observe(500, 100, 3).action == mp.CONTINUE  # post-copy is never aborted
    m = mp.Monitor(mp.EffectivePolicy(completion_timeout_seconds=100, allow_post_copy=True,
                                      post_copy_after_iterations=3))
    assert m.observe(1, 100, 2).action == mp.CONTINUE
    assert m.observe(2, 100, 3).action == mp.START_POST_COPY


def test_a_refused_switch_to_post_copy_is_asked_again_then_aborted() -> None:
    """libvirt refusing migrateStartPostCopy must not leave a migration that cannot converge
    running forever in pre-copy: asked again at every sample, aborted after the grace."""
    m = mp.Monitor(mp.EffectivePolicy(completion_timeout_seconds=10, allow_post_copy=True))
    assert m.observe(10, 100, 2).action == mp.START_POST_COPY
    assert m.observe(11, 100, 3).action == mp.START_POST_COPY  # not confirmed: asked again
    m.switch_failed("cannot acquire state change lock")
    assert m.observe(10 + mp.POST_COPY_SWITCH_GRACE_SECONDS - 1, 100, 9).action == mp.START_POST_COPY
    d = m.observe(10 + mp.POST_COPY_SWITCH_GRACE_SECONDS, 100, 10)
    assert (d.action, d.reason) == (mp.ABORT, mp.POST_COPY_FAILED) and "state change lock" in d.message
    assert m.observe(500, 100, 11).action == mp.CONTINUE  # decided once
    m = mp.Monitor(mp.EffectivePolicy(completion_timeout_seconds=10, allow_post_copy=True))
    assert m.observe(10, 100, 2).action == mp.START_POST_COPY
    m.switched()
    assert m.observe(500, 100, 3).action == mp.CONTINUE  # in post-copy: never aborted


# -- the controller records the policy -------------------------------------------------------------------
def test_a_starting_migration_records_its_effective_policy(controller_ctx: MakeControllerContext) -> None:
    kube = FakeKube()
    kube.add_vm({"metadata": {"name": "vm", "namespace": "ns", "uid": "u1", "labels": {"class": "big"}},
                 "spec": {"memory": "2Gi", "network": {"pool": "p"}},
                 "status": {"phase": "Running", "nodeName": "n1"}})
    kube.add_migration({"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"}})
    ctx = controller_ctx(kube)
    ctx.policies = StaticPolicies([policy("big", vm={"matchLabels": {"class": "big"}}, completionTimeoutPerGiB=30,
                                          allowAutoConverge=True)], {"ns": {}})
    assert cm.advance(ctx, "ns", "m1") == mg.SCHEDULING
    st = kube.migrations["ns", "m1"]["status"]
    assert st["policy"]["name"] == "big" and st["policy"]["completionTimeoutSeconds"] == 60
    assert st["policy"]["allowAutoConverge"] is True
    # a policy changed later does not change a migration under way
    ctx.policies = StaticPolicies()
    cm.advance(ctx, "ns", "m1")
    assert kube.migrations["ns", "m1"]["status"]["policy"]["name"] == "big"


# -- the agent's bounded end --------------------------------------------------------------------------------
def samples(n: int, remaining: int = 50 * MiB, step_ms: int = 1000, throttle: int | None = None) -> list[JobProgress]:
    return [JobProgress(memory_total=64 * MiB, memory_processed=i * MiB, memory_iteration=i + 1,
                        data_remaining=remaining, time_elapsed_ms=i * step_ms, auto_converge_throttle=throttle)
            for i in range(n)]


def with_policy(kube: FakeKube, **fields: Any) -> None:
    eff = mp.EffectivePolicy(name="test", **fields)
    kube.migrations["ns", "m1"]["status"]["policy"] = eff.to_status()


@pytest.fixture
def agent(tmp_path: Path) -> tuple[migrate.Migrator, FakeKube, Any]:
    m, kube, dm = setup(tmp_path)
    m.poll_interval = 0.01
    return m, kube, dm


def test_completion_timeout_aborts_and_the_vm_stays_on_the_source(agent: Any) -> None:
    m, kube, dm = agent
    with_policy(kube, completion_timeout_seconds=5, progress_timeout_seconds=100)
    dm.slow_migration(DNAME, samples(50))
    run(m, kube)
    assert "abort_job" in dm.calls and DNAME in dm.domains and not dm.remotes[TARGET_URI].domains
    st = mig_status(kube)
    assert (st["phase"], st["reason"]) == (mg.FAILED, mp.COMPLETION_TIMEOUT)
    assert "completion timeout of 5s" in st["message"] and "keeps running on n1" in st["message"]
    assert st["stats"]["standbyMs"] >= 0
    assert st["stats"]["memoryIteration"] >= 6  # how far pre-copy got (one pass a second here)
    vst = vm_status(kube)
    assert vst["nodeName"] == "n1" and vst["phase"] == "Running" and "migration" not in vst


def test_no_progress_aborts_with_its_own_reason(agent: Any) -> None:
    m, kube, dm = agent
    with_policy(kube, completion_timeout_seconds=1000, progress_timeout_seconds=3)
    dm.slow_migration(DNAME, samples(50))
    run(m, kube)
    st = mig_status(kube)
    assert (st["phase"], st["reason"]) == (mg.FAILED, mp.NO_PROGRESS) and DNAME in dm.domains


def test_post_copy_completes_instead_and_the_request_carries_the_policy(agent: Any) -> None:
    m, kube, dm = agent
    with_policy(kube, completion_timeout_seconds=3, allow_post_copy=True, allow_auto_converge=True,
                max_downtime_ms=250, bandwidth_mibps=4)
    dm.slow_migration(DNAME, samples(50, throttle=40))
    run(m, kube)
    (_, _, request), = dm.migrations
    assert request.post_copy and request.auto_converge and request.bandwidth_mibps == 4
    assert "start_post_copy" in dm.calls and "abort_job" not in dm.calls
    assert dm.max_downtime == {DNAME: 250}
    st = mig_status(kube)
    assert st["phase"] == mg.SUCCEEDED and st["stats"]["postCopy"] is True
    assert st["stats"]["autoConvergeThrottlePercent"] == 40
    assert any(c["type"] == "PostCopy" for c in st["conditions"])
    assert vm_status(kube)["nodeName"] == "n2"


def test_a_switch_to_post_copy_refused_once_is_retried(agent: Any) -> None:
    m, kube, dm = agent
    with_policy(kube, completion_timeout_seconds=3, allow_post_copy=True)
    dm.fail("start_post_copy", OperationInvalid("Timed out during operation: cannot acquire state change lock", 68))
    dm.slow_migration(DNAME, samples(50))
    run(m, kube)
    assert dm.calls.count("start_post_copy") == 2 and "abort_job" not in dm.calls
    st = mig_status(kube)
    assert st["phase"] == mg.SUCCEEDED and st["stats"]["postCopy"] is True


def test_a_switch_to_post_copy_libvirt_keeps_refusing_ends_in_an_abort(agent: Any) -> None:
    m, kube, dm = agent
    with_policy(kube, completion_timeout_seconds=3, allow_post_copy=True)
    refusal = OperationInvalid("Requested operation is not valid: post-copy migration is not enabled", 55)
    dm.fail("start_post_copy", *[refusal] * 200)
    dm.slow_migration(DNAME, samples(100))
    run(m, kube)
    assert "abort_job" in dm.calls and DNAME in dm.domains and not dm.remotes[TARGET_URI].domains
    st = mig_status(kube)
    assert (st["phase"], st["reason"]) == (mg.FAILED, mp.POST_COPY_FAILED)
    assert "refused the switch to post-copy for 60s" in st["message"] and "not enabled" in st["message"]
    assert vm_status(kube)["nodeName"] == "n1" and "postCopy" not in st["stats"]


def test_auto_converge_that_converges_just_completes(agent: Any) -> None:
    m, kube, dm = agent
    with_policy(kube, completion_timeout_seconds=100, allow_auto_converge=True)
    dm.slow_migration(DNAME, [JobProgress(memory_total=64 * MiB, data_remaining=r * MiB, time_elapsed_ms=i * 500,
                                          auto_converge_throttle=20 * i) for i, r in enumerate((40, 30, 10, 1))],
                      ends=True)
    run(m, kube)
    st = mig_status(kube)
    assert st["phase"] == mg.SUCCEEDED and st["stats"]["autoConvergeThrottlePercent"] == 60
    assert "postCopy" not in st["stats"]


def test_the_stream_goes_to_the_targets_migration_address(agent: Any) -> None:
    m, kube, dm = agent
    kube.nodes["n2"]["metadata"]["annotations"][labels.MIGRATION_ADDRESS] = "10.9.0.2"
    run(m, kube)
    (_, uri, request), = dm.migrations
    assert uri == TARGET_URI  # libvirt's connection stays on the management network
    assert (request.stream_uri, request.listen_address, request.tls_destination) == ("tcp://10.9.0.2", "10.9.0.2", "n2")
    assert mig_status(kube)["migrationEndpoint"] == "tcp://10.9.0.2"


def test_ipv6_migration_addresses_are_bracketed() -> None:
    node = {"metadata": {"annotations": {labels.MIGRATION_ADDRESS: "fd00::2"}}}
    assert migrate.stream_endpoint(node, "qemu+tls://n2/system") == ("tcp://[fd00::2]", "tcp://[fd00::2]")
    assert migrate.stream_endpoint({}, "qemu+tls://n2.example/system") == (
        None, "n2.example (libvirt host, management network)")


# -- a drain says why it waits -----------------------------------------------------------------------------
def test_a_drain_names_the_limit_that_ended_the_last_attempt() -> None:
    now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    failed = {"metadata": {"name": "evac-vm-1", "namespace": "ns", "labels": {labels.EVACUATION_LABEL: "n1"}},
              "spec": {"vmName": "vm"},
              "status": {"phase": mg.FAILED, "reason": mp.COMPLETION_TIMEOUT, "endTimestamp": "2026-11-29T11:59:58Z",
                         "message": "aborted: not completed within its completion timeout of 10s"}}
    ok, why = mg.retry_state("vm", "ns", [failed], "n1", mg.Limits(), now)
    assert not ok and why.startswith("retrying in 3s after 1 failure(s), the last: CompletionTimeout (evac-vm-1:")


def test_status_shows_standby_next_to_downtime() -> None:
    migs = [{"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"},
             "status": {"phase": mg.SUCCEEDED, "sourceNode": "n1", "targetNode": "n2", "startTimestamp": "t1",
                        "stats": {"downtimeMs": 40, "standbyMs": 5200}, "policy": {"name": "p"}}}]
    doc = cli_ops.status_document([], [], [], namespace="ns", migrations=migs)
    assert doc["migrations"][0]["standbyMs"] == 5200
    text = cli_ops.render_status(doc)
    assert "STANDBY" in text and "5.2s" in text and "40ms" in text


def test_a_drain_behind_a_retry_says_which_attempt_and_why_the_last_failed() -> None:
    now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    failed = {"metadata": {"name": "evac-vm-1", "namespace": "ns", "labels": {labels.EVACUATION_LABEL: "n1"}},
              "spec": {"vmName": "vm"},
              "status": {"phase": mg.FAILED, "reason": mp.NO_PROGRESS, "endTimestamp": "2026-11-29T11:59:00Z",
                         "message": "aborted: no progress for 150s"}}
    running = {"metadata": {"name": "evac-vm-2", "namespace": "ns", "labels": {labels.EVACUATION_LABEL: "n1"}},
               "spec": {"vmName": "vm"}, "status": {"phase": mg.RUNNING, "sourceNode": "n1"}}
    vm = {"metadata": {"name": "vm", "namespace": "ns"}, "spec": {},
          "status": {"phase": "Migrating", "nodeName": "n1", "migration": {"name": "evac-vm-2"}}}
    _, waiting = mg.plan_evacuation("n1", [vm], [failed, running], mg.Limits(), now)
    assert waiting["ns/vm"].startswith("migrating (attempt 2, the last: NoProgress (evac-vm-1: aborted: no progress")
