"""failovervm.reflector: a collection kept from one paged LIST and then a watch, which resumes
from the last resourceVersion it saw after a broken connection and lists again only after 410."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytest

from failovervm import reflector
from failovervm.kubeclient import ApiException


class Keeper(reflector.Reflector):
    def __init__(self, api: Any, **kw: Any) -> None:
        super().__init__(api, "/api/v1/things", name="test-things", retry_seconds=0.01, **kw)
        self.items: dict[str, str] = {}
        self.resets = 0

    def reset(self, objs: Iterable[Mapping[str, Any]]) -> None:
        self.resets += 1
        self.items = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in objs}

    def see(self, event_type: str, obj: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            self.items.pop(obj["metadata"]["name"], None)
        else:
            self.items[obj["metadata"]["name"]] = obj["metadata"]["resourceVersion"]


def obj(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}}


class Resp:
    def __init__(self, events: list[dict[str, Any]], then: BaseException | None) -> None:
        self.events, self.then = events, then

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        for ev in self.events:
            yield json.dumps(ev).encode() + b"\n"
        if self.then is not None:
            raise self.then

    def release_conn(self) -> None: ...
    def shutdown(self) -> None: ...


class FakeApi:
    """LIST pages from `objects`; each watch request takes the next of `watches`: (events, then)
    where `then` is None (the server ends the watch), an exception to raise mid-stream, or an
    ApiException to refuse the request. After the script, watches wait (an idle stream)."""

    def __init__(self, objects: list[dict[str, Any]], list_rv: int, watches: list[Any]) -> None:
        self.objects, self.list_rv, self.watches = objects, list_rv, watches
        self.lists: list[Any] = []
        self.watched_from: list[str | None] = []

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, **_: Any) -> Any:
        q = dict(query or {})
        self.lists.append(q.get("_continue"))
        start = int(q.get("_continue") or 0)
        page = self.objects[start:start + q["limit"]]
        more = start + q["limit"] < len(self.objects)
        return {"items": page, "metadata": {"resourceVersion": str(self.list_rv),
                                            "continue": str(start + q["limit"]) if more else None}}

    def stream(self, path: str, q: Mapping[str, Any], read_timeout: float | None) -> Resp:
        self.watched_from.append(q.get("resource_version"))
        if not self.watches:
            time.sleep(0.05)
            return Resp([], None)
        events, then = self.watches.pop(0)
        if isinstance(then, ApiException):
            raise then
        return Resp(events, then)


def run_until(r: reflector.Reflector, done: Any, timeout: float = 5) -> None:
    r.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, "not reached"
            time.sleep(0.005)
    finally:
        r.stop()


def test_lists_in_pages_then_follows_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reflector, "LIST_PAGE", 2)
    api = FakeApi([obj(f"o{i}", i) for i in range(5)], 10, [
        ([{"type": "ADDED", "object": obj("new", 11)}, {"type": "BOOKMARK", "object": obj("", 12)},
          {"type": "DELETED", "object": obj("o1", 13)}], None)])
    k = Keeper(api)
    run_until(k, lambda: len(api.watched_from) >= 2)
    assert api.lists == [None, "2", "4"] and k.resets == 1
    assert sorted(k.items) == ["new", "o0", "o2", "o3", "o4"]
    # The server ended the first watch: the next one resumes from the bookmark's version, no LIST.
    assert api.watched_from[:2] == ["10", "13"]


def test_a_broken_connection_resumes_from_the_last_version_seen_without_listing() -> None:
    api = FakeApi([obj("a", 1)], 5, [
        ([{"type": "MODIFIED", "object": obj("a", 6)}], ConnectionResetError("peer gone")),
        ([], ApiException(503, "Service Unavailable")),  # the apiserver restarting
        ([{"type": "ADDED", "object": obj("b", 7)}], None)])
    k = Keeper(api)
    run_until(k, lambda: "b" in k.items and k.synced())
    assert api.watched_from[:3] == ["5", "6", "6"] and len(api.lists) == 1 and k.resets == 1
    assert k.items == {"a": "6", "b": "7"}


def test_gone_lists_again() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}
    api = FakeApi([obj("a", 1)], 5, [([gone], None), ([], ApiException(410, "Gone"))])
    k = Keeper(api)
    run_until(k, lambda: k.resets >= 3 and k.synced())
    assert len(api.lists) >= 3 and api.watched_from[:3] == ["5", "5", "5"]


def test_not_synced_until_listed_nor_while_the_connection_is_broken() -> None:
    api = FakeApi([obj("a", 1)], 5, [([], ApiException(503, "Service Unavailable"))] * 50)
    k = Keeper(api)
    k.max_retry_seconds = 0.01
    assert not k.synced()
    seen: list[bool] = []

    def sample() -> bool:
        if len(api.watched_from) >= 2:  # past the first refusal
            seen.append(k.synced())
        return len(api.watched_from) >= 20

    run_until(k, sample)
    assert seen and not any(seen) and k.resets == 1  # refused again and again: readers ask the API meanwhile
