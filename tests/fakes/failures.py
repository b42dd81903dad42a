"""Failures a test switches on in a fake: `fake.fail("method", *errors)` makes the next calls of
that method raise these errors, in order. Methods marked @failable check for one on every call."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound="Failures")


class Failures:
    def __init__(self) -> None:
        self.failures: dict[str, list[BaseException]] = {}

    def fail(self, method: str, *errors: BaseException) -> None:
        """The next len(errors) calls of `method` (e.g. "update_vm_status") raise these, in order."""
        self.failures.setdefault(method, []).extend(errors)

    def maybe_fail(self, method: str) -> None:
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)


def failable(method: Callable[Concatenate[F, P], R]) -> Callable[Concatenate[F, P], R]:
    @functools.wraps(method)
    def call(self: F, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.maybe_fail(method.__name__)
        return method(self, *args, **kwargs)

    return call
