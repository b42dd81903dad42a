"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from failovervm.controller.context import ControllerContext, ControllerSettings
from failovervm.kube import KubeAPI

MakeControllerContext = Callable[..., ControllerContext]


@pytest.fixture
def controller_ctx() -> Iterator[MakeControllerContext]:
    """`controller_ctx(kube, **settings)`: a ControllerContext over a test's fake Kube (which
    implements only the KubeAPI methods its test reaches), with ControllerSettings fields as
    keyword arguments."""
    made: list[ControllerContext] = []

    def make(kube: object, **settings: Any) -> ControllerContext:
        ctx = ControllerContext(ControllerSettings(**settings), cast(KubeAPI, kube))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.admission.shutdown(wait=False)
