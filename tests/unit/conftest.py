"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from failovervm.controller.context import ControllerContext, ControllerSettings
from failovervm.kube import KubeAPI


class MakeControllerContext(Protocol):
    def __call__(self, kube: KubeAPI, **settings: Any) -> ControllerContext: ...


@pytest.fixture
def controller_ctx() -> Iterator[MakeControllerContext]:
    """`controller_ctx(kube, **settings)`: a ControllerContext over a test's Kubernetes API (the
    shared FakeKube of tests/fakes), with ControllerSettings fields as keyword arguments."""
    made: list[ControllerContext] = []

    def make(kube: KubeAPI, **settings: Any) -> ControllerContext:
        ctx = ControllerContext(ControllerSettings(**settings), kube)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.admission.shutdown(wait=False)
        ctx.eviction.shutdown(wait=False)
