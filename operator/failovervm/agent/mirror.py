"""A watch-backed copy of a few objects in the agent's memory (the VFPools, its own Node), so the
inventory round reads nothing from the API server: LIST once, then WATCH from the last
resourceVersion seen (bookmarks included), LIST again only when the watch fails (410 Gone, a
dropped connection)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from failovervm.kubeclient import ApiClient, Watch

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# `list_fn()` -> (objects, resourceVersion); `watch_fn(resourceVersion)` -> (event type, object)s.
ListFn = Callable[[], tuple[list[Obj], str]]
WatchFn = Callable[[str], Iterable[tuple[str, Obj]]]


class Mirror:
    """The objects a LIST + WATCH shows, by name. `changed()` is called (from the watch thread)
    after the first LIST and after every event that changed the copy."""

    def __init__(self, what: str, list_fn: ListFn, watch_fn: WatchFn, changed: Callable[[], None]) -> None:
        self.what, self.list_fn, self.watch_fn, self.changed = what, list_fn, watch_fn, changed
        self._objects: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.stop = threading.Event()

    def objects(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def get(self, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get(name)

    def sync_once(self) -> str:
        """LIST and replace the copy; returns the resourceVersion to watch from."""
        items, rv = self.list_fn()
        with self._lock:
            self._objects = {str(o["metadata"]["name"]): o for o in items}
        self.ready.set()
        self.changed()
        return rv

    def apply(self, kind: str, obj: Obj) -> bool:
        """One watch event; True when the copy changed."""
        name = str((obj.get("metadata") or {}).get("name") or "")
        with self._lock:
            if kind == "DELETED":
                return self._objects.pop(name, None) is not None
            if kind in ("ADDED", "MODIFIED"):
                self._objects[name] = obj
                return True
        return False  # BOOKMARK, ERROR

    def run(self) -> None:
        """The watch thread, until `stop` is set: LIST only to (re)start the watch."""
        backoff = 0.5
        rv: str | None = None
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self.sync_once()
                for kind, obj in self.watch_fn(rv):
                    if kind == "ERROR":
                        rv = None  # e.g. 410 Gone: LIST again
                        break
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if self.apply(kind, obj):
                        self.changed()
                    backoff = 0.5
                    if self.stop.is_set():
                        return
            except Exception as exc:
                rv = None
                log.warning("%s watch failed: %s; retrying in %.1fs", self.what, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def start(self) -> Mirror:
        threading.Thread(target=self.run, name=f"mirror-{self.what}", daemon=True).start()
        return self


def kube_list_watch(api: ApiClient, path: str, query: dict[str, Any], api_version: str,
                    kind: str) -> tuple[ListFn, WatchFn]:
    """list_fn and watch_fn over a collection of the API (`path`, e.g. kubeclient.core_path("nodes")),
    `query` its selectors; listed items get their apiVersion and kind, which a LIST leaves out."""

    def list_fn() -> tuple[list[Obj], str]:
        data = api.request("GET", path, query=query)
        items = [{"apiVersion": api_version, "kind": kind, **o} for o in data.get("items") or []]
        return items, str(data["metadata"]["resourceVersion"])

    def watch_fn(rv: str) -> Iterable[tuple[str, Obj]]:
        w = Watch(api)
        try:
            for ev in w.stream(path, resource_version=rv, timeout_seconds=300, allow_watch_bookmarks=True, **query):
                yield str(ev["type"]), dict(ev.get("object") or {})
        finally:
            w.stop()

    return list_fn, watch_fn
