"""Isolation of the controller's periodic work: one part that fails (a node whose objects the API
refuses, one VM) is logged and counted, and the others still run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from failovervm.metrics import RECONCILE_ERRORS

log = logging.getLogger(__name__)


def isolated(what: str, fn: Callable[..., Any], *args: Any) -> bool:
    """Run one part of a sweep; a failure is logged and counted, and the other parts still run (one
    node whose objects the API refuses never stops the sweep of the others). False when it failed."""
    try:
        fn(*args)
        return True
    except Exception as exc:
        RECONCILE_ERRORS.labels("controller", "Sweep").inc()
        log.warning("%s failed (the other parts of the sweep go on; retried on the next sweep): %s", what, exc,
                    exc_info=True)
        return False
