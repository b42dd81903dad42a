"""A deep copy of JSON-shaped data (what the API server sends: mappings, lists, scalars).

`copy.deepcopy` handles any object, with a memo of every object it met: several times slower than
this, and the controller copies on every watch event (the summaries of its caches) and every status
write (docs/scale.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def copy(value: Any) -> Any:
    """Mappings become dicts and lists/tuples lists, copied all the way down; scalars (str, int,
    float, bool, None: immutable) are shared."""
    if isinstance(value, Mapping):
        return {k: copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy(v) for v in value]
    return value
