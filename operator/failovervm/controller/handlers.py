"""Kopf handlers of the controller. Thin: each one calls into failovervm.controller.vms."""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from failovervm import API_GROUP, API_VERSION
from failovervm.controller import vms
from failovervm.controller.config import CONFIG
from failovervm.validation import validate_vm

log = logging.getLogger(__name__)
FVM = (API_GROUP, API_VERSION, "failovervms")
POOL = (API_GROUP, API_VERSION, "vfpools")


def _unplaced(*, status: kopf.Status, **_: Any) -> bool:
    return not status.get("nodeName")


@kopf.on.event(*FVM)
def on_vm_event(*, type: str, name: str, namespace: str | None, status: kopf.Status, meta: kopf.Meta,
                **_: Any) -> None:
    if namespace is None or type == "DELETED" or meta.get("deletionTimestamp") or status.get("nodeName"):
        return
    outcome = vms.ensure_scheduled(namespace, name)
    log.debug("scheduling %s/%s: %s", namespace, name, outcome)


@kopf.timer(*FVM, interval=3.0, initial_delay=3.0, when=_unplaced)
def retry_pending(*, name: str, namespace: str | None, **_: Any) -> None:
    """Capacity may have appeared (a VM deleted, a node added, a pool grown): try again."""
    vms.ensure_scheduled(namespace or "", name)


@kopf.on.delete(*FVM)
def on_vm_delete(*, name: str, namespace: str | None, uid: str, **_: Any) -> None:
    try:
        vms.finalize(namespace or "", name, uid)
    except vms.StillDeleting as exc:
        raise kopf.TemporaryError(str(exc), delay=2) from None


_last_claim_sweep = 0.0


@kopf.timer(*POOL, interval=5.0)
def pool_status(*, name: str, **_: Any) -> None:
    """Per pool: refresh allocated/free counts; at most every 30 s, sweep orphaned VFClaims."""
    global _last_claim_sweep
    vms.refresh_pool_status(name)
    now = time.monotonic()
    if now - _last_claim_sweep >= 30.0:
        _last_claim_sweep = now
        vms.collect_orphaned_claims()


@kopf.on.validate(*FVM, operations=["CREATE", "UPDATE"], id="failovervm-validate")
def validate_failovervm(*, body: kopf.Body, **kwargs: Any) -> None:
    old = kwargs.get("old")
    if kwargs.get("operation") == "UPDATE" and old and dict(old.get("spec") or {}) == dict(body.get("spec") or {}):
        return  # metadata/finalizer/label changes: the spec was validated when it was written
    kube = CONFIG.k()
    vm = {"metadata": dict(body.get("metadata") or {}), "spec": dict(body.get("spec") or {}),
          "status": dict(body.get("status") or {})}
    pool = (vm["spec"].get("network") or {}).get("pool")
    errors = validate_vm(
        vm,
        others=kube.list_vms(),
        pool_exists=bool(pool) and kube.get_pool(str(pool)) is not None,
        storage_roots=CONFIG.storage_roots,
    )
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)
