"""Kopf's body and patch views, without the reference cycles that made every watch event garbage
for the cyclic collector.

Kopf (1.45) wraps each watch event's JSON in a `Body` that stores its `meta`, `spec` and `status`
views, each of which holds the Body; the `meta` view stores its `labels` and `annotations` views,
which hold it. Each `Patch` does the same with its own views and holds the Body it patches. A
cycle is never freed by reference counting, so every event's whole JSON tree (dozens of dicts and
lists per object) outlived Kopf's use of it until a collection found it: the garbage census
(failovervm/memdebug.py, FAILOVERVM_GC_CENSUS) counted 16,400 objects/s of cyclic garbage in the
active controller during a burst of 1,000 VM creates, all of it these views and the trees behind
them. Surviving two young collections, they reached the oldest generation, whose collections walk
everything the controller holds: that is where the controller's GC time grew with the cluster
(docs/scale.md).

`install` makes those attributes descriptors that build a fresh view on each read, and ignore
Kopf's one assignment in `__init__`: a view holds its source, the source no longer holds its
views, and the tree is freed as soon as Kopf drops the Body. Nothing in Kopf compares views by
identity or stores anything on them. Kopf's code is not changed; `acyclic` checks the result, and
the controller warns when a Kopf upgrade defeats it (tests/unit/test_kopfviews.py fails then too)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

from kopf._cogs.structs import bodies, dicts, patches


class FreshView:
    """A data descriptor for an attribute that stored a view of its own object: each read makes a
    new view; writes are dropped (Kopf's `__init__` assigns it once)."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self._make = make

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else self._make(obj)

    def __set__(self, obj: Any, value: Any) -> None:
        return None


def fresh(cls: type[dicts.MappingView[str, Any]], path: str) -> Callable[[Any], Any]:
    """How to make a view of class `cls` at `path` of its source: what Kopf's `MappingView.__init__`
    sets (`_src`, `_path`), without the views that Kopf's subclasses would build and store in their
    own `__init__` (those are FreshView descriptors too, and a view is read far more often than a
    Body is made)."""
    parsed = dicts.parse_field(path)

    def make(src: Any) -> Any:
        view = cls.__new__(cls)
        view._src = src
        view._path = parsed
        return view

    return make


# (class, attribute, how its view is made): every attribute through which Kopf's views hold
# their own source (kopf/_cogs/structs/bodies.py and patches.py).
VIEWS: tuple[tuple[type, str, Callable[[Any], Any]], ...] = (
    (bodies.Body, "_meta", fresh(bodies.Meta, "metadata")),
    (bodies.Body, "_spec", fresh(bodies.Spec, "spec")),
    (bodies.Body, "_status", fresh(bodies.Status, "status")),
    (bodies.Meta, "_labels", fresh(dicts.MappingView, "labels")),
    (bodies.Meta, "_annotations", fresh(dicts.MappingView, "annotations")),
    (patches.Patch, "_meta", fresh(patches.MetaPatch, "metadata")),
    (patches.Patch, "_spec", fresh(patches.SpecPatch, "spec")),
    (patches.Patch, "_status", fresh(patches.StatusPatch, "status")),
    (patches.MetaPatch, "_labels", fresh(dicts.MutableMappingView, "labels")),
    (patches.MetaPatch, "_annotations", fresh(dicts.MutableMappingView, "annotations")),
)


def install() -> bool:
    """Replace the stored views by fresh ones (idempotent); whether Kopf's bodies and patches are
    now free of cycles (`acyclic`)."""
    for cls, attr, make in VIEWS:
        if not isinstance(cls.__dict__.get(attr), FreshView):
            setattr(cls, attr, FreshView(make))
    return acyclic()


def acyclic() -> bool:
    """Whether a Body and a Patch of it, with every view read, are freed by reference counting alone
    (with the collector paused meanwhile, so that it cannot be what freed them)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        body = bodies.Body({"metadata": {"name": "x", "labels": {"a": "b"}, "annotations": {}},
                            "spec": {"s": 1}, "status": {"t": 2}})
        patch = patches.Patch(body=body)
        seen = (body.meta.labels["a"], body.meta.annotations, body.spec, body.status,
                patch.meta.labels, patch.meta.annotations, patch.spec, patch.status)
        patch.meta.labels["a"] = "c"
        refs: list[weakref.ref[Any]] = [weakref.ref(body), weakref.ref(patch)]
        del body, patch, seen
        return all(ref() is None for ref in refs)
    finally:
        if was_enabled:
            gc.enable()
