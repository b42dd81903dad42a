"""A watch-backed copy of a few objects in the agent's memory (the VFPools, its own Node), so the
inventory round reads nothing from the API server. It is a failovervm.reflector.Reflector: a paged
LIST to start, then one watch with bookmarks that resumes from the last resourceVersion seen after a
broken connection, and lists again only after 410 Gone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from failovervm.kubeclient import ApiClient
from failovervm.reflector import Reflector

Obj = dict[str, Any]


class Mirror(Reflector):
    """The objects of a collection (`path`, `query` its selectors as the client names them), by
    name, each with its apiVersion and kind (a LIST leaves them out). `changed()` is called (from
    the watch thread) after every LIST and after every event that changed the copy; `ready` is set
    once the first LIST is in."""

    def __init__(self, api: ApiClient, path: str, api_version: str, kind: str, changed: Callable[[], None],
                 **query: Any) -> None:
        super().__init__(api, path, name=f"mirror-{kind}", retry_seconds=0.5, **query)
        self.api_version, self.kind, self.changed = api_version, kind, changed
        self._objects: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def objects(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def get(self, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get(name)

    def reset(self, objs: Iterable[Mapping[str, Any]]) -> None:
        fresh = {str(o["metadata"]["name"]): self._typed(o) for o in objs}  # built aside, then swapped in
        with self._lock:
            self._objects = fresh
        self.ready.set()
        self.changed()

    def see(self, event_type: str, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        with self._lock:
            if event_type == "DELETED":
                if self._objects.pop(name, None) is None:
                    return
            else:
                self._objects[name] = self._typed(obj)
        self.changed()

    def _typed(self, obj: Mapping[str, Any]) -> Obj:
        return {"apiVersion": self.api_version, "kind": self.kind, **obj}


class KeyFeed(Reflector):
    """Every object of a collection as "namespace/name" to `feed` (from the watch thread): each one
    a LIST shows, and each one an event is about (deleted ones too). Keeps nothing itself: the agent's
    own FailoverVMs (label selector: its node) go to its work queue this way."""

    def __init__(self, api: ApiClient, path: str, feed: Callable[[str], object], **query: Any) -> None:
        super().__init__(api, path, name="feed-" + path.rsplit("/", 1)[-1], retry_seconds=0.5, **query)
        self.feed = feed

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace')}/{meta.get('name')}"

    def reset(self, objs: Iterable[Mapping[str, Any]]) -> None:
        for obj in objs:
            self.feed(self._key(obj))

    def see(self, event_type: str, obj: Mapping[str, Any]) -> None:
        self.feed(self._key(obj))
