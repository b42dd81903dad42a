"""`failovervm controller`: runs the Kopf operator with the controller's handlers."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from failovervm import kube as kube_mod
from failovervm import webhookcerts
from failovervm.controller.context import ControllerContext, ControllerSettings
from failovervm.labels import API_GROUP, CONTROLLER_FINALIZER, KOPF_ANNOTATION_PREFIX, PEERING_NAME
from failovervm.metrics import start_metrics
from failovervm.migration import Limits

log = logging.getLogger(__name__)


@dataclass
class ControllerArgs:
    kubeconfig: str | None
    storage_roots: list[str]
    webhook_host: str | None
    webhook_port: int
    webhook_cert_dir: str | None
    webhook_managed: bool
    metrics_port: int
    health_port: int | None
    peering: bool = True
    namespace: str = "failovervm-system"
    parallel_migrations_per_cluster: int = 5
    parallel_outbound_migrations_per_node: int = 2
    guard_image: str = "registry.k8s.io/pause:3.10"
    log_format: str = "text"
    require_failover_ready: bool = False
    migration_history: int = 5
    handover_timeout_seconds: int = 120


def _webhook_server(args: ControllerArgs) -> kopf.WebhookServer:
    assert args.webhook_host
    ca, crt, key = webhookcerts.ensure(Path(args.webhook_cert_dir or "/tmp/failovervm-webhook"), args.webhook_host)
    return kopf.WebhookServer(
        addr=args.webhook_host, port=args.webhook_port, host=args.webhook_host,
        certfile=str(crt), pkeyfile=str(key), cafile=str(ca),
    )


def settings(args: ControllerArgs) -> ControllerSettings:
    return ControllerSettings(
        storage_roots=tuple(str(Path(r).resolve()) for r in args.storage_roots),
        namespace=args.namespace,
        guard_image=args.guard_image,
        require_failover_ready=args.require_failover_ready,
        migration_history=args.migration_history,
        handover_timeout_seconds=args.handover_timeout_seconds,
        limits=Limits(per_cluster=args.parallel_migrations_per_cluster,
                      per_node_outbound=args.parallel_outbound_migrations_per_node),
    )


def run(args: ControllerArgs) -> int:
    from failovervm.logs import configure as configure_logs

    configure_logs("controller", None, args.log_format)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    ctx = ControllerContext(settings(args), kube_mod.Kube(kube_mod.load(args.kubeconfig)))
    import failovervm.controller.handlers  # noqa: F401  (registers the handlers)

    @kopf.on.login()
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Kopf's client piggybacking does not recognise this kubernetes client version;
        # use its own loaders: the ServiceAccount in-cluster, else the kubeconfig.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = CONTROLLER_FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_ANNOTATION_PREFIX, key="last-handled-configuration")
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = 16
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        if args.webhook_host:
            settings.admission.server = _webhook_server(args)
            if args.webhook_managed:
                settings.admission.managed = API_GROUP

    start_metrics(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(kopf.operator(
        clusterwide=True,
        peering_name=PEERING_NAME if args.peering else None,
        standalone=not args.peering,
        liveness_endpoint=liveness,
        memo=kopf.Memo(ctx=ctx),
    ))
    return 0
