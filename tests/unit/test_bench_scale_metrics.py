"""benchmarks/scale.py's reading of the apiserver's /metrics: requests refused with 409 Conflict, and
the watch events sent to all watchers by resource (what the scale report prints per VM)."""

from __future__ import annotations

from typing import Any

from benchmarks import scale

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
