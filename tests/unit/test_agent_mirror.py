"""The agent's watch-backed copies (agent.mirror.Mirror) of the VFPools and its own Node: LIST only
to (re)start the watch, resume from the last resourceVersion seen (bookmarks too), relist after an
ERROR or a failure; every change calls back (the agent then runs an inventory round)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from failovervm.agent import mirror as mirror_mod
from failovervm.agent.mirror import Mirror


def obj(name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}, **extra}


def test_lists_once_then_follows_the_watch_from_the_last_version_seen() -> None:
    lists: list[int] = []
    watched_from: list[str] = []
    changes: list[int] = []
    rounds: list[list[tuple[str, dict[str, Any]]]] = [
        [("ADDED", obj("b", "11")), ("BOOKMARK", obj("", "15"))],
        [("MODIFIED", obj("a", "16", spec={"x": 1})), ("DELETED", obj("b", "17"))],
        [("ERROR", {"code": 410})],
        [],
    ]
    mirror: Mirror

    def list_fn() -> tuple[list[dict[str, Any]], str]:
        lists.append(1)
        return [obj("a", "9")], "10"

    def watch_fn(rv: str) -> Iterable[tuple[str, dict[str, Any]]]:
        watched_from.append(rv)
        if not rounds:
            mirror.stop.set()
            return []
        return rounds.pop(0)

    mirror = Mirror("VFPool", list_fn, watch_fn, lambda: changes.append(1))
    mirror.run()
    # Resumed from the last version (the bookmark's too); the ERROR made it list again; a watch that
    # ends quietly (its timeout) is resumed without a LIST.
    assert watched_from == ["10", "15", "17", "10", "10"]
    assert len(lists) == 2 and mirror.ready.is_set()
    assert [o["metadata"]["name"] for o in mirror.objects()] == ["a"]
    # 2 LISTs, ADDED b, MODIFIED a, DELETED b (a bookmark changes nothing).
    assert len(changes) == 5


def test_a_failing_list_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    mirror: Mirror

    def list_fn() -> tuple[list[dict[str, Any]], str]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("connection refused")
        mirror.stop.set()
        return [], "1"

    mirror = Mirror("Node", list_fn, lambda rv: [], lambda: None)
    slept: list[float] = []
    monkeypatch.setattr(mirror_mod.time, "sleep", slept.append)
    mirror.run()
    assert len(calls) == 2 and slept == [0.5] and mirror.ready.is_set()
