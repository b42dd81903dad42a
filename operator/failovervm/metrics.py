"""Prometheus metrics of the controller and the agents."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_ERRORS = Counter(
    "failovervm_reconcile_errors_total", "Reconcile errors", ["component", "kind"])
LIBVIRT_CONNECTED = Gauge(
    "failovervm_libvirt_connected", "1 when the agent's libvirt connection is up", ["node"])
DOMAIN_START_SECONDS = Histogram(
    "failovervm_domain_start_seconds", "Time from define to a running domain", ["node"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
VF_ATTACH = Counter(
    "failovervm_vf_attach_total", "VF hot-plug attempts by result", ["node", "result"])


def start_metrics(port: int, addr: str = "127.0.0.1") -> None:
    if port:
        start_http_server(port, addr=addr)
