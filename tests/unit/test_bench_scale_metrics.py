"""benchmarks/scale.py's reading of the apiserver's /metrics: requests refused with 409 Conflict, and
the watch events sent to all watchers by resource (what the scale report prints per VM)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from benchmarks import scale
from benchmarks import scale_curve as sc

BEFORE = """\
apiserver_request_total{code="200",resource="failovervms",scope="resource",subresource="status",verb="PUT"} 10
apiserver_request_total{code="409",resource="failovervms",scope="resource",subresource="status",verb="PUT"} 1
apiserver_request_total{code="200",resource="pods",scope="cluster",subresource="",verb="LIST"} 2
apiserver_watch_events_total{resource="pods"} 5
apiserver_watch_events_sizes_sum{resource="pods"} 5000
apiserver_watch_events_sizes_count{resource="pods"} 5
"""
AFTER = """\
apiserver_request_total{code="200",resource="failovervms",scope="resource",subresource="status",verb="PUT"} 30
apiserver_request_total{code="409",resource="failovervms",scope="resource",subresource="status",verb="PUT"} 4
apiserver_request_total{code="200",resource="pods",scope="cluster",subresource="",verb="LIST"} 2
apiserver_watch_events_total{resource="pods"} 25
apiserver_watch_events_sizes_sum{resource="pods"} 45000
apiserver_watch_events_sizes_count{resource="pods"} 25
apiserver_watch_events_total{resource="failovervms"} 7
apiserver_watch_events_sizes_sum{resource="failovervms"} 700
"""

NO_SANDBOX: Any = None  # scrape() reads the text given, never the sandbox


def test_requests_are_summed_over_codes_and_409s_counted_apart() -> None:
    assert scale.scrape(NO_SANDBOX, AFTER)[("PUT", "failovervms/status")] == 34
    assert scale.scrape(NO_SANDBOX, AFTER)[("LIST", "pods@cluster")] == 2
    assert scale.scrape(NO_SANDBOX, AFTER, code="409") == {("PUT", "failovervms/status"): 4}


def test_watch_events_are_the_difference_by_resource() -> None:
    assert scale.watch_events(BEFORE, AFTER) == {
        "pods": {"events": 20.0, "bytes": 40000.0},
        "failovervms": {"events": 7.0, "bytes": 700.0},
    }
    assert scale.watch_events(AFTER, AFTER) == {}


def test_profiles_compare_per_vm_by_growth() -> None:
    from benchmarks import profile_compare as pc

    a = pc.Profile.parse("main (m.py:1);place (v.py:10) 50\nmain (m.py:1);index (k.py:3) 50\n")
    b = pc.Profile.parse("main (m.py:2);place (v.py:12) 250\nmain (m.py:1);index (k.py:3) 500\nnoise\n")
    assert (a.samples, b.samples) == (100, 750)
    assert a.own == {"place (v.py)": 50, "index (k.py)": 50}  # line numbers dropped
    assert b.inclusive["main (m.py)"] == 750
    # 50 samples/s: 50 samples over 1,000 VMs are 1 ms per VM; 500 over 5,000 are 2 ms.
    assert pc.ms_per_vm(50, 1000) == 1.0 and pc.ms_per_vm(500, 5000) == 2.0
    report = pc.compare(a, 1000, b, 5000).splitlines()
    assert report[0] == "profiled time per VM: 2.00 ms at 1000, 3.00 ms at 5000"
    assert report[2].split()[-2:] == ["index", "(k.py)"] and "+1.00" in report[2]  # grew most: first


GO_TRACES = """File: kube-apiserver
Type: cpu
Duration: 10s, Total samples = 60ms ( 0.6%)
-----------+-------------------------------------------------------
      30ms   runtime.spanClass.sizeclass (inline)
             runtime.scanSpan
             runtime.gcBgMarkWorker
-----------+-------------------------------------------------------
         key:  value
      20ms   encoding/json.appendCompact
             k8s.io/apiserver/pkg/endpoints/handlers.(*patcher).patchResource.func2
             net/http.(*conn).serve
-----------+-------------------------------------------------------
   10000us   runtime.scanSpan
             runtime.gcBgMarkWorker
-----------+-------------------------------------------------------
"""


def test_go_cpu_traces_become_samples_at_100_per_second() -> None:
    """`go tool pprof -traces` of kube-apiserver (scale --pprof): leaf first, root last, times in
    any unit; a label line is not a frame."""
    from benchmarks import profile_compare as pc

    prof = pc.Profile.parse_traces(GO_TRACES)
    assert prof.samples == 6  # 60 ms at 100 samples/s
    assert prof.own == {"runtime.spanClass.sizeclass": 3, "encoding/json.appendCompact": 2, "runtime.scanSpan": 1}
    assert prof.inclusive["runtime.gcBgMarkWorker"] == 4 and prof.inclusive["net/http.(*conn).serve"] == 2
    assert "key:  value" not in prof.inclusive
    # 4 samples over 1,000 VMs at 100 samples/s: 0.04 ms per VM.
    assert pc.ms_per_vm(prof.inclusive["runtime.gcBgMarkWorker"], 1000, pc.GO_RATE) == 0.04


def test_histogram_sums_and_means_over_the_matching_series() -> None:
    text = ('lat_seconds_sum{verb="POST"} 2.5\nlat_seconds_count{verb="POST"} 5\n'
            'lat_seconds_sum{verb="GET"} 9\nlat_seconds_count{verb="GET"} 1\n')
    assert scale.sum_count(text, "lat_seconds", verb="POST") == (2.5, 5.0)
    assert scale.sum_count(text, "lat_seconds") == (11.5, 6.0)
    assert scale.mean_ms("", text, "lat_seconds", verb="POST") == 500.0
    assert scale.mean_ms(text, text, "lat_seconds") is None  # nothing observed in between


def test_gc_pauses_between_two_scrapes_by_generation() -> None:
    """The controller's pause histogram as prometheus_client writes it: the collections between the
    scrapes, their mean and the bucket that holds the longest."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from failovervm import gcstats

    reg = CollectorRegistry()
    hist = Histogram("failovervm_python_gc_pause_seconds", "pauses", ["generation"],
                     buckets=gcstats.PAUSE_BUCKETS, registry=reg)
    hist.labels("0").observe(0.0003)
    hist.labels("1").observe(0.03)
    before = generate_latest(reg).decode()
    for took in (0.0004, 0.0015, 0.003):
        hist.labels("0").observe(took)
    hist.labels("2").observe(7.0)  # longer than the last finite bucket
    after = generate_latest(reg).decode()
    pauses = scale.gc_pauses(before, after)
    assert set(pauses) == {"0", "2"}  # generation 1 did not run in between
    assert pauses["0"]["collections"] == 3 and pauses["0"]["longest_at_most_ms"] == 5.0
    assert abs((pauses["0"]["mean_ms"] or 0) - 1.633) < 0.001
    assert pauses["2"] == {"collections": 1, "mean_ms": 7000.0, "longest_at_most_ms": None}
    assert scale.gc_pauses("", "") == {}
    assert scale.gc_seconds(after) == {}  # another metric


def test_share_of_a_histogram_over_a_bucket_bound() -> None:
    def text(fast: int, slow: int, other: int = 0) -> str:
        return (f'w_bucket{{operation="CREATE",le="0.1"}} {fast}\n'
                f'w_bucket{{operation="CREATE",le="+Inf"}} {fast + slow}\n'
                f'w_bucket{{operation="UPDATE",le="0.1"}} 0\nw_bucket{{operation="UPDATE",le="+Inf"}} {other}\n')
    assert scale.share_over(text(10, 0), text(40, 10, 99), "w", 0.1, operation="CREATE") == 0.25
    assert scale.share_over(text(10, 0), text(10, 0), "w", 0.1, operation="CREATE") is None  # none in between
    assert scale.share_over(text(0, 0), text(4, 0), "w", 0.5, operation="CREATE") is None  # no such bucket


def test_context_switches_are_summed_over_threads_and_kept_per_vm() -> None:
    status = "Name:\tpython\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n"
    one = scale.parse_switches(status)
    assert one == {"voluntary_switches": 120.0, "involuntary_switches": 7.0}
    assert scale.parse_switches(status, one) == {"voluntary_switches": 240.0, "involuntary_switches": 14.0}
    # This process's own threads, read from /proc: at least the main thread's switches.
    assert scale.context_switches(os.getpid())["voluntary_switches"] >= 0
    details = {"controller": {"user_s": 2.0, "system_s": 0.5, "voluntary_switches": 3000.0,
                              "involuntary_switches": 100.0}}
    assert scale.details_per(details, 1000) == {"controller": {
        "user_ms": 2.0, "system_ms": 0.5, "voluntary_switches": 3.0, "involuntary_switches": 0.1}}


def _run(n: int, per_vm: float, clients: float, apiserver: float, controller: float) -> dict[str, Any]:
    return {"n": n, "raw": {"cpu_ms_per_pod": {"apiserver": 8.0, "benchmark clients": clients}},
            "operator": {"per_vm_ms": per_vm, "controller_cpu_ms_per_vm": controller,
                         "cpu_ms_per_vm": {"apiserver": apiserver, "controller": 1.0, "controller-2": controller,
                                           "etcd": 3.0, "benchmark clients": clients}}}


def test_the_curve_gives_each_run_at_the_first_runs_machine_speed() -> None:
    # The second run's machine was 25 % slower (its clients took 1.25 ms per VM for the same work).
    p1, p2 = sc.point(_run(1000, 20.0, 1.0, 20.0, 12.0)), sc.point(_run(5000, 27.5, 1.25, 27.5, 15.0))
    assert p2.cpu_ms["controller (active)"] == 15.0 and p2.cpu_ms["controller (standby)"] == 1.0
    assert "controller-2" not in p2.cpu_ms
    assert sc.at_speed(p2.time_ms, p2, p1) == 22.0
    table = {r[0].strip(): r[1:] for r in sc.rows([p1, p2])}
    assert table["time per VM, as measured"] == ["20.00 ms", "27.50 ms (+38 %)"]
    assert table["time per VM at the first run's speed"] == ["20.00 ms", "22.00 ms (+10 %)"]
    assert table["apiserver"] == ["20.00 ms", "22.00 ms (+10 %)"]
    # The operator's replicas took 13.0 ms per VM in the first run, 12.8 at its speed in the second:
    # the time per VM at the first run's speed, scaled by all CPU with theirs at 13.0 (38.4 / 38.2).
    assert table["the same, had the operator's CPU per VM not grown"] == ["20.00 ms", "22.12 ms (+11 %)"]
    assert table["controller (active)"] == ["12.00 ms", "12.00 ms (+0 %)"]
    assert table["Kubernetes (kube-apiserver, etcd, kube-scheduler, kube-controller-manager)"] == [
        "23.00 ms", "24.40 ms (+6 %)"]
    assert "benchmark clients" not in table  # the index has its own row
    assert table["raw floor: kube-apiserver's CPU per plain pod, at the first raw phase's speed"] == [
        "8.00 ms", "6.40 ms (-20 %)"]
    assert "N = 5,000" in sc.render(sc.rows([p1, p2])).splitlines()[0]


def test_the_speed_probe_times_its_fixed_rounds_and_leaves_the_clients_cpu_alone(monkeypatch: Any) -> None:
    monkeypatch.setattr(scale, "PROBE_PERIOD", 0.01)
    probe = scale.SpeedProbe().start()
    time.sleep(0.2)
    res = probe.stop()
    assert res["rounds"] >= 2 and res["median_ms"] > 0 and res["cpu_s"] > 0
    cpu = {"benchmark clients": 1.5, "apiserver": 20.0}
    details = {"benchmark clients": {"user_s": 1.3, "system_s": 0.2}}
    scale.without_probe(cpu, details, {"cpu_s": 0.5, "median_ms": 3.0, "rounds": 50})
    assert cpu == {"benchmark clients": 1.0, "apiserver": 20.0}
    assert details["benchmark clients"] == {"user_s": 0.8, "system_s": 0.2}


def test_the_curve_takes_the_speed_probe_as_the_index_when_every_run_has_it() -> None:
    r1, r2 = _run(1000, 20.0, 1.0, 20.0, 12.0), _run(5000, 24.0, 1.0, 24.0, 12.0)
    for r, probe in ((r1, 3.0), (r2, 3.6)):  # the second phase ran 20 % slower
        r["operator"]["speed_probe_ms"] = r["raw"]["speed_probe_ms"] = probe
    p1, p2 = sc.point(r1), sc.point(r2)
    assert p1.probe and p2.probe and p2.index_ms == 3.6
    table = {r[0].strip(): r[1:] for r in sc.rows([p1, p2])}
    assert table["machine-speed index (the speed probe's round, CPU)"] == ["3.00 ms", "3.60 ms (+20 %)"]
    assert table["time per VM at the first run's speed"] == ["20.00 ms", "20.00 ms (+0 %)"]
    assert "benchmark clients" in table  # an ordinary process when the probe is the index
    with pytest.raises(SystemExit, match="speed probe"):
        sc.rows([p1, sc.point(_run(5000, 24.0, 1.0, 24.0, 12.0))])
