"""The agent's watch-backed copies (agent.mirror.Mirror, a reflector.Reflector) of the VFPools and
its own Node: a paged LIST, then the watch, resumed from the last resourceVersion seen after a broken
connection, listed again after 410; the objects carry their apiVersion and kind, and every change
calls back (the agent then runs an inventory round)."""

from __future__ import annotations

import time
from typing import Any

from failovervm.agent.mirror import KeyFeed, Mirror
from failovervm.kubeclient import ApiException
from tests.unit.test_reflector import FakeApi, obj


def wait_until(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_lists_then_follows_the_watch_and_calls_back_on_every_change() -> None:
    api = FakeApi([obj("a", 9), obj("b", 9)], 10, [
        ([{"type": "ADDED", "object": obj("c", 11)}, {"type": "BOOKMARK", "object": obj("", 15)}], None),
        ([{"type": "MODIFIED", "object": {**obj("a", 16), "spec": {"x": 1}}},
          {"type": "DELETED", "object": obj("b", 17)}, {"type": "DELETED", "object": obj("zz", 18)}],
         ConnectionResetError("connection reset")),
        ([], ApiException(410, "Gone")),
    ])
    changes: list[int] = []
    mirror = Mirror(api, "/api/v1/things", "v1", "Thing", lambda: changes.append(1))
    assert not mirror.ready.is_set()
    mirror.start()
    try:
        wait_until(lambda: len(api.watched_from) >= 5)
    finally:
        mirror.stop()
    # The end of a watch resumes from the bookmark; a reset connection from the last event seen; the
    # 410 makes it list again and watch from the new list's version.
    assert api.watched_from[:5] == ["10", "15", "18", "10", "10"]
    assert api.lists == [None, None]  # two LISTs, one page each
    assert mirror.ready.is_set()
    assert mirror.get("a") == {"apiVersion": "v1", "kind": "Thing", "metadata": {"name": "a", "resourceVersion": "9"}}
    assert sorted(o["metadata"]["name"] for o in mirror.objects()) == ["a", "b"]  # the second LIST's
    # 2 LISTs, ADDED c, MODIFIED a, DELETED b; not the bookmark, nor deleting what it never had.
    assert len(changes) == 5


def test_a_failing_list_is_retried() -> None:
    class Flaky(FakeApi):
        def request(self, *args: Any, **kw: Any) -> Any:
            if not self.lists:
                self.lists.append("failed")
                raise OSError("connection refused")
            return super().request(*args, **kw)

    api = Flaky([obj("n1", 3)], 4, [])
    mirror = Mirror(api, "/api/v1/nodes", "v1", "Node", lambda: None, field_selector="metadata.name=n1")
    mirror.retry_seconds = 0.01
    mirror.start()
    try:
        assert mirror.ready.wait(5)
    finally:
        mirror.stop()
    assert api.lists == ["failed", None] and mirror.get("n1") is not None


def test_the_agents_vm_feed_queues_every_vm_listed_or_changed_and_resumes() -> None:
    """The agent's own FailoverVMs (KeyFeed): each VM of the LIST and of every event (a deletion too)
    reaches the work queue; a broken connection resumes from the last version, not with a new LIST."""
    def vm(name: str, rv: int) -> dict[str, Any]:
        return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": str(rv)}}

    api = FakeApi([vm("a", 3), vm("b", 3)], 4, [
        ([{"type": "MODIFIED", "object": vm("a", 5)}], ConnectionResetError("connection reset")),
        ([{"type": "DELETED", "object": vm("b", 6)}, {"type": "BOOKMARK", "object": obj("", 9)}], None),
    ])
    fed: list[str] = []
    feed = KeyFeed(api, "/apis/failovervm.io/v1alpha1/failovervms", fed.append, label_selector="node=n1")
    feed.start()
    try:
        wait_until(lambda: len(api.watched_from) >= 3)
    finally:
        feed.stop()
    assert fed == ["ns/a", "ns/b", "ns/a", "ns/b"]
    assert api.lists == [None] and api.watched_from[:3] == ["4", "5", "9"]
