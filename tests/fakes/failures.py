"""Failures and interleavings a test switches on in a fake: `fake.fail("method", *errors)` makes the
next calls of that method raise these errors, in order; `fake.before("method", *hooks)` makes the
next calls of that method first run these hooks, in order (another writer landing just before the
call, say). Methods marked @failable check for both on every call."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound="Failures")
Hook = Callable[[], object]


class Failures:
    def __init__(self) -> None:
        self.failures: dict[str, list[BaseException]] = {}
        self.hooks: dict[str, list[Hook | None]] = {}

    def fail(self, method: str, *errors: BaseException) -> None:
        """The next len(errors) calls of `method` (e.g. "update_vm_status") raise these, in order."""
        self.failures.setdefault(method, []).extend(errors)

    def before(self, method: str, *hooks: Hook | None) -> None:
        """The next len(hooks) calls of `method` first run these, in order (None: nothing before that
        call). A hook may call the fake itself: it is taken off the queue before it runs."""
        self.hooks.setdefault(method, []).extend(hooks)

    def intercept(self, method: str) -> None:
        """What a call of `method` meets first: its next hook, then its next failure."""
        hooks = self.hooks.get(method)
        hook = hooks.pop(0) if hooks else None
        if hook is not None:
            hook()
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)


def failable(method: Callable[Concatenate[F, P], R]) -> Callable[Concatenate[F, P], R]:
    @functools.wraps(method)
    def call(self: F, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.intercept(method.__name__)
        return method(self, *args, **kwargs)

    return call
