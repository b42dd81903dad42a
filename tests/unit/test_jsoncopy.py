"""failovervm.jsoncopy: the controller's deep copy of API objects."""

from __future__ import annotations

from failovervm import jsoncopy


def test_a_json_copy_is_deep_and_plain() -> None:
    src = {"a": [{"b": 1}, ("c", None)], "d": {"e": True, "f": 1.5}}
    out = jsoncopy.copy(src)
    assert out == {"a": [{"b": 1}, ["c", None]], "d": {"e": True, "f": 1.5}}
    out["a"][0]["b"] = 2
    out["d"]["e"] = False
    assert src["a"][0] == {"b": 1} and src["d"]["e"] is True  # type: ignore[index]
