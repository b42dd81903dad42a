"""The 30 s sweep's release of objects a VM owns (`spec.owner`: VFClaims, MACLeases) once that VM
no longer needs them: decided from the watch caches after a grace (a VM just created may not be
cached yet), confirmed by reading the VM before anything is deleted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from failovervm.controller.context import ControllerContext
from failovervm.kube import age_seconds

log = logging.getLogger(__name__)

Orphaned = Callable[[Mapping[str, Any], Mapping[str, Any] | None], bool]


def release_orphans(ctx: ControllerContext, owned: Iterable[Mapping[str, Any]], orphaned: Orphaned,
                    delete: Callable[[str, str | None], None], kind: str) -> list[str]:
    """Delete (`delete(name, uid)`) each of `owned` older than the claims' grace that `orphaned`
    says of its VM, first as cached, then as the API shows it. Returns the names released."""
    removed = []
    for obj in owned:
        if age_seconds(obj) < ctx.settings.claim_gc_grace_seconds:
            continue
        owner = (obj.get("spec") or {}).get("owner") or {}
        if not orphaned(obj, ctx.cache.vm(str(owner.get("uid")))):
            continue
        vm = ctx.kube.get_vm(str(owner.get("namespace") or ""), str(owner.get("name") or ""))
        if orphaned(obj, vm):
            name = str(obj["metadata"]["name"])
            delete(name, obj["metadata"].get("uid"))
            removed.append(name)
            log.warning("released orphaned %s %s", kind, name)
    return removed
