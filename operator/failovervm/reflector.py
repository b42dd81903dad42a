"""A collection kept in memory from one LIST and then one watch, in a thread of its own (what
client-go calls a reflector): for the readers that cannot use Kopf's indexes, such as a standby
controller replica's admission webhook (Kopf pauses a standby's watches) or the sandbox heartbeat.

A subclass keeps only what it needs of each object (`reset`, `see`); the base lists (in pages of
LIST_PAGE objects) to start, then watches from the list's resourceVersion with bookmarks. A watch
the server ended, or whose connection broke (an apiserver restart: after a growing pause), resumes
from the last resourceVersion it saw, so the events missed meanwhile come then; only a 410 Gone
(that version is too old) makes it list again. `synced()` is False until the first LIST, and from a
broken connection until the server accepts the resumed watch: a reader then asks the API itself."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self

from failovervm.kubeclient import ApiClient, ApiException, Watch

log = logging.getLogger(__name__)

# Seconds of silence after which a watch's connection counts as dead (a connection can go silent
# without closing): the apiserver sends a watch with allowWatchBookmarks a BOOKMARK at least every
# minute even when nothing changes (seen on the sandbox's 1.36: the first after 60.1 s on an idle
# collection), so a minute and a half without a byte means it is gone: resume from the last version.
SILENCE_SECONDS = 90.0

# Objects per LIST page: a first LIST of 100,000 VMs is 200 requests of a bounded size, not one
# answer of hundreds of MiB.
LIST_PAGE = 500


class Expired(Exception):
    """The watch cannot resume from the resourceVersion it had (410 Gone): list again."""


class Reflector:
    """One collection (`path`, e.g. kubeclient.custom_path(...) without a namespace: all of them)
    from a LIST and a watch; `query`: labelSelector/fieldSelector for both, as the client's names
    (label_selector=..., field_selector=...)."""

    def __init__(self, api: ApiClient, path: str, *, name: str, retry_seconds: float = 1.0,
                 max_retry_seconds: float = 30.0, timeout_seconds: int = 300, **query: Any) -> None:
        self.api = api
        self.path = path
        self.name = name
        self.query = query
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.timeout_seconds = timeout_seconds
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._watch: Watch | None = None
        self.version = ""  # the last resourceVersion seen: a watch that broke resumes from it
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- what a subclass keeps -----------------------------------------------------------------------

    def reset(self, objs: Iterable[Mapping[str, Any]]) -> None:
        """A fresh LIST: keep these, forget everything else. `objs` comes a page at a time from the
        API: read it to its end once, and keep serving the old state meanwhile (build the new one
        aside and swap it in)."""
        raise NotImplementedError

    def see(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""
        raise NotImplementedError

    # -- the thread ------------------------------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        watch = self._watch
        if watch is not None:
            watch.stop()

    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def _run(self) -> None:
        pause = self.retry_seconds
        listed = False
        while not self._stopped.is_set():
            try:
                if not listed:
                    self.version = ""
                    self.reset(self._listed())  # a page at a time: never the whole LIST in memory
                    if not self.version:
                        raise RuntimeError("the LIST was not read to its end")
                    listed = True
                    self._synced.set()
                self._follow()
                pause = self.retry_seconds
            except Expired as exc:  # what happened since self.version is gone: list again
                log.info("%s: %s; listing again", self.name, exc)
                listed = False
                self._synced.clear()
            except Exception as exc:  # a lost connection, an apiserver restart: resume from the last seen
                log.warning("%s: watch failed (readers ask the API until it resumes): %s", self.name, exc)
                self._synced.clear()
                self._stopped.wait(pause)
                pause = min(pause * 2, self.max_retry_seconds)
        self._synced.clear()

    def _follow(self) -> None:
        """Watch from self.version until the server ends the watch (timeoutSeconds), moving
        self.version along with the events. Raises Expired on an ERROR event (410 Gone: too old),
        and whatever a lost connection raises, self.version then at the last event seen."""
        self._watch = watch = Watch(self.api)
        try:
            for ev in watch.stream(self.path, resource_version=self.version, timeout_seconds=self.timeout_seconds,
                                   allow_watch_bookmarks=True, read_timeout=SILENCE_SECONDS,
                                   on_open=self._synced.set, **self.query):
                obj = ev.get("object") or {}
                if ev["type"] == "ERROR":
                    raise Expired(f"watch ended: {obj.get('message') or obj}")
                self.version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
                if ev["type"] != "BOOKMARK":
                    self.see(str(ev["type"]), obj)
        except ApiException as exc:
            if exc.status == 410:
                raise Expired(f"watch refused: {exc.reason}") from exc
            raise

    def _listed(self) -> Iterator[dict[str, Any]]:
        """Every object, a page (LIST_PAGE objects) at a time; `self.version` is the list's
        resourceVersion once the last page is read."""
        cont: str | None = None
        while True:
            page = self.api.request("GET", self.path, query={**self.query, "limit": LIST_PAGE, "_continue": cont})
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or None
            if not cont:
                self.version = str(meta.get("resourceVersion") or "")
            yield from page.get("items") or []
            if not cont:
                return
