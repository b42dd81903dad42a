"""failovervm.controller.kopfviews: Kopf's bodies and patches are freed by reference counting."""

from __future__ import annotations

import gc
import weakref

import kopf
from kopf._cogs.structs import bodies, patches

from failovervm.controller import kopfviews


def test_views_hold_their_source_and_the_source_holds_no_view() -> None:
    assert kopfviews.install()
    assert kopfviews.install()  # idempotent
    raw = {"metadata": {"name": "vm", "namespace": "ns", "uid": "u1", "labels": {"a": "b"},
                        "annotations": {"c": "d"}},
           "spec": {"running": True}, "status": {"phase": "Pending"}}
    body = kopf.Body(raw)
    # Reads and writes go through as before, and follow a replaced source.
    assert body.meta.name == "vm" and body.metadata.namespace == "ns" and body.meta.uid == "u1"
    assert dict(body.meta.labels) == {"a": "b"} and body.meta.annotations["c"] == "d"
    assert body.spec["running"] is True and body.status.get("phase") == "Pending"
    body._replace_with({"metadata": {"name": "other"}})
    assert body.meta.name == "other" and dict(body.meta.labels) == {} and dict(body.spec) == {}
    patch = kopf.Patch(body=body)
    patch.meta.labels["x"] = "y"
    patch.meta.annotations["z"] = None
    patch.status["phase"] = "Running"
    patch.spec["running"] = False
    assert dict(patch) == {"metadata": {"labels": {"x": "y"}, "annotations": {"z": None}},
                           "status": {"phase": "Running"}, "spec": {"running": False}}
    for obj in (body, patch, body.meta, patch.meta):
        assert not {"_meta", "_spec", "_status", "_labels", "_annotations"} & set(vars(obj))


class _Leaf:
    pass


def test_an_event_tree_goes_with_its_body_without_a_collection() -> None:
    kopfviews.install()
    gc.disable()
    try:
        leaf = _Leaf()
        tree = {"metadata": {"name": "vm", "labels": {"a": "b"}}, "spec": {"l": [1, leaf]}}
        body = bodies.Body(tree)
        patch = patches.Patch(body=body)
        _ = (body.meta.labels, patch.meta.annotations, body.status, patch.status)
        ref_body, ref_patch, ref_spec = weakref.ref(body), weakref.ref(patch), weakref.ref(leaf)
        del body, patch, tree, leaf, _
        assert ref_body() is None and ref_patch() is None and ref_spec() is None
    finally:
        gc.enable()


def test_every_view_kopf_stores_is_replaced() -> None:
    # A Kopf upgrade that stores another view of its own object would make a cycle again: the list
    # of replaced attributes must cover every attribute holding a view of its own object after
    # __init__ (a view's `_src` and a patch's `_original` Body are references forward).
    kopfviews.install()
    body = bodies.Body({"metadata": {}})
    patch = patches.Patch(body=body)
    for obj in (body, body.meta, patch, patch.meta):
        back = [k for k, v in vars(obj).items() if getattr(v, "_src", None) is obj]
        assert back == [], f"{type(obj).__name__} stores views of itself: {back}"


def test_a_fresh_view_is_what_kopf_would_build() -> None:
    kopfviews.install()
    body = bodies.Body({"metadata": {}})
    patch = patches.Patch(body=body)
    for cls, attr, _make in kopfviews.VIEWS:
        src = body if cls is bodies.Body else body.meta if cls is bodies.Meta else \
            patch if cls is patches.Patch else patch.meta
        view = getattr(src, attr)
        # Kopf's own __init__ (the views it would store dropped): Body's and Patch's parts take their
        # source only, the plain views a path too.
        own = (bodies.Meta, bodies.Spec, bodies.Status, patches.MetaPatch, patches.SpecPatch, patches.StatusPatch)
        built = type(view)(src) if type(view) in own else type(view)(src, view._path)
        assert vars(view) == vars(built), attr
