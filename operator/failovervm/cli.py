"""The `failovervm` command line (also installed as the kubectl plugin `kubectl-failovervm`)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from failovervm.errors import FailoverVMError
from failovervm.labels import DEFAULT_IMAGE, SANDBOX_STATE_DIR

if TYPE_CHECKING:
    from failovervm.kube import KubeAPI

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


# The sandbox's default state directory; `console` reads the VMs' serial logs from there too.
SANDBOX_MISSING = ("failovervm: error: `failovervm sandbox` is a development tool that ships with the source "
                   "checkout (hack/install-deps.sh installs it), not with this installation")


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Hand everything after `sandbox` to the sandbox's own command line (failovervm_sandbox.cli).

    The sandbox is not part of the product: it is imported here, only when this command runs."""
    try:
        from failovervm_sandbox import cli as sandbox_cli
    except ModuleNotFoundError as exc:
        if exc.name != "failovervm_sandbox":
            raise
        print(SANDBOX_MISSING, file=sys.stderr)
        return 2
    return sandbox_cli.run(args.argv, usage_error=args.usage_error)


def _quantity(value: str) -> str:
    """A non-negative Kubernetes quantity (checked here so a typo fails at start, not per VM)."""
    from failovervm.quantity import parse_quantity_decimal

    try:
        if parse_quantity_decimal(value) < 0:
            raise ValueError(f"must not be negative: {value!r}")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _storage_grant(value: str) -> Any:
    """A --storage-grant (failovervm.storage.StorageGrant), checked here so a typo fails at start."""
    from failovervm.storage import StorageGrant

    try:
        return StorageGrant.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def _peering_lifetime(value: str) -> int:
    """--peering-lifetime: long enough for a renew deadline before it (controller/ha.py)."""
    from failovervm.controller.ha import MIN_PEERING_LIFETIME, STAND_DOWN_MARGIN

    n = int(value)
    if n < MIN_PEERING_LIFETIME:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_PEERING_LIFETIME} s (the active replica stands down {STAND_DOWN_MARGIN:g} s "
            f"before its entry expires, and renews it every lifetime / 4), not {n}")
    return n


def cmd_controller(args: argparse.Namespace) -> int:
    from failovervm.controller.main import ControllerArgs, run

    return run(ControllerArgs(
        kubeconfig=args.kubeconfig, storage_roots=args.storage_root, webhook_host=args.webhook_host,
        webhook_port=args.webhook_port, webhook_cert_dir=args.webhook_cert_dir,
        webhook_managed=not args.webhook_unmanaged, metrics_port=args.metrics_port,
        health_port=args.health_port, peering=not args.standalone, namespace=args.namespace,
        parallel_migrations_per_cluster=args.parallel_migrations_per_cluster,
        parallel_outbound_migrations_per_node=args.parallel_outbound_migrations_per_node,
        vm_pod_image=args.vm_pod_image, vm_overhead_cpu=args.vm_overhead_cpu,
        vm_overhead_memory=args.vm_overhead_memory, log_format=args.log_format,
        require_failover_ready=args.require_failover_ready, migration_history=args.migration_history,
        handover_timeout_seconds=args.migration_handover_timeout, storage_grants=list(args.storage_grant),
        migration_start_timeout_seconds=args.migration_start_timeout,
        priority=args.priority, peering_lifetime=args.peering_lifetime,
    ))


def cmd_migrate(args: argparse.Namespace) -> int:
    from failovervm import kube as kube_mod
    from failovervm import labels

    kube = kube_mod.Kube(kube_mod.load(args.kubeconfig, args.context))
    ns = args.namespace or kube_mod.current_namespace(args.kubeconfig, args.context)
    if kube.get_vm(ns, args.name) is None:
        print(f"failovervm: error: FailoverVM {ns}/{args.name} not found", file=sys.stderr)
        return 1
    spec: dict[str, Any] = {"vmName": args.name}
    if args.to:
        spec["targetNode"] = args.to
    if args.bandwidth:
        spec["bandwidthMiBps"] = args.bandwidth
    created = kube.create_migration({
        "apiVersion": labels.API_GROUP_VERSION, "kind": "FailoverVMMigration",
        "metadata": {"generateName": f"{args.name}-migration-"[:58], "namespace": ns}, "spec": spec})
    name = created["metadata"]["name"]
    if args.output in ("json", "yaml") and not args.wait:
        _print_obj(created, args.output)
        return 0
    print(f"failovervmmigration.failovervm.io/{name} created", file=sys.stderr)
    if not args.wait:
        return 0
    import time

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        mig = kube.get_migration(ns, name) or {}
        st = mig.get("status") or {}
        if st.get("phase") in ("Succeeded", "Failed", "Aborted"):
            if args.output in ("json", "yaml"):
                _print_obj(mig, args.output)
            else:
                stats = st.get("stats") or {}
                print(f"{name}: {st['phase']} {st.get('sourceNode')} -> {st.get('targetNode')} "
                      f"downtime={stats.get('downtimeMs', '-')}ms standby={stats.get('standbyMs', '-')}ms "
                      f"{st.get('reason', '')} {st.get('message', '')}")
            return 0 if st["phase"] == "Succeeded" else 1
        time.sleep(0.5)
    print(f"failovervm: error: {name} did not finish within {args.timeout}s", file=sys.stderr)
    return 1


def cmd_restart(args: argparse.Namespace) -> int:
    """Ask the VM's agent to restart its domain (stop within terminationGracePeriodSeconds, start
    with the current spec), e.g. to apply a spec change that RestartRequired reports."""
    import datetime as dt
    import time

    from failovervm import kube as kube_mod
    from failovervm.labels import RESTART_ANNOTATION

    kube = kube_mod.Kube(kube_mod.load(args.kubeconfig, args.context))
    ns = args.namespace or kube_mod.current_namespace(args.kubeconfig, args.context)
    vm = kube.get_vm(ns, args.name)
    if vm is None:
        print(f"failovervm: error: FailoverVM {ns}/{args.name} not found", file=sys.stderr)
        return 1
    if not (vm.get("status") or {}).get("nodeName"):
        print(f"failovervm: error: FailoverVM {ns}/{args.name} is not placed on a node; nothing to restart",
              file=sys.stderr)
        return 1
    token = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kube.patch_vm(ns, args.name, {"metadata": {"annotations": {RESTART_ANNOTATION: token}}})
    print(f"failovervm.failovervm.io/{args.name} restart requested ({token})", file=sys.stderr)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        st = (kube.get_vm(ns, args.name) or {}).get("status") or {}
        if st.get("restartedFor") == token and st.get("phase") in ("Running", "Stopped", "Failed"):
            print(f"{args.name}: {st['phase']} on {st.get('nodeName')}")
            return 0 if st["phase"] != "Failed" else 1
        time.sleep(0.5)
    print(f"failovervm: error: {args.name} did not restart within {args.timeout}s", file=sys.stderr)
    return 1


def _kube_client(args: argparse.Namespace) -> KubeAPI:
    from failovervm import kube as kube_mod

    return kube_mod.Kube(kube_mod.load(args.kubeconfig, args.context))


def _api_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report kubeconfig and API failures of the kubectl-style commands as one error line."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from urllib3.exceptions import HTTPError

        from failovervm.kubeclient import ApiException, ConfigException

        try:
            return fn(args)
        except ApiException as exc:
            print(f"failovervm: error: {exc.status} {exc.reason}: {_api_message(exc)}", file=sys.stderr)
        except ConfigException as exc:
            print(f"failovervm: error: kubeconfig: {exc}", file=sys.stderr)
        except HTTPError as exc:
            print(f"failovervm: error: cannot reach the API server: {exc}", file=sys.stderr)
        return 1

    return wrapper


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.body)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")


@_api_errors
def cmd_status(args: argparse.Namespace) -> int:
    from failovervm import cli_ops
    from failovervm import kube as kube_mod

    kube = _kube_client(args)
    ns = None if args.all_namespaces else (args.namespace or kube_mod.current_namespace(args.kubeconfig, args.context))
    pools = cli_ops.with_inventories(kube.list_pools(), kube.list_inventories(), kube.list_claims())
    doc = cli_ops.status_document(kube.list_vms(), kube.list_nodes(), pools, namespace=ns,
                                  migrations=kube.list_migrations(ns))
    if args.output in ("json", "yaml"):
        _print_obj(doc, args.output)
    else:
        print(cli_ops.render_status(doc, color=cli_ops.is_tty(sys.stdout)), end="")
    return 0


@_api_errors
def cmd_evacuate(args: argparse.Namespace) -> int:
    from failovervm import cli_ops, labels

    kube = _kube_client(args)
    structured = args.output in ("json", "yaml")
    info = sys.stderr if structured else sys.stdout
    node = kube.get_node(args.node)
    if node is None:
        print(f"failovervm: error: node {args.node} not found", file=sys.stderr)
        return 1
    already = cli_ops.is_cordoned(node)
    if already:
        print(f"node/{args.node} already cordoned", file=info)
    else:
        kube.patch_node(args.node, cli_ops.CORDON_PATCH)
        print(f"node/{args.node} cordoned (spec.unschedulable=true)", file=info)
    selector = f"{labels.VM_NODE}={args.node}"
    progress = cli_ops.evacuation_progress(args.node, kube.list_vms(selector), kube.list_migrations())
    if progress.total:
        print(f"the controller now moves the {progress.total} FailoverVM(s) on {args.node} away (live migration, "
              f"or shutdown and restart for evictionStrategy Shutdown); `kubectl uncordon {args.node}` stops it",
              file=info)
    doc: dict[str, Any] = {"node": args.node, "cordoned": True, "alreadyCordoned": already}
    if not args.watch:
        print(cli_ops.render_progress(progress), file=info)
        if structured:
            _print_obj({**doc, "progress": progress.to_dict()}, args.output)
        return 0

    def fetch() -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        return kube.get_node(args.node), kube.list_vms(selector), kube.list_migrations()

    display = cli_ops.progress_display(info)
    try:
        res = cli_ops.watch_evacuation(args.node, fetch, display, args.timeout, interval=args.interval)
    except KeyboardInterrupt:
        display.finish()
        return 130
    if structured:
        _print_obj({**doc, "progress": res.progress.to_dict(), "message": res.message}, args.output)
    print(res.message if res.code == 0 else f"failovervm: error: {res.message}",
          file=info if res.code == 0 else sys.stderr)
    return res.code


def cmd_console(args: argparse.Namespace) -> int:
    from failovervm import cli_ops, domxml
    from failovervm import kube as kube_mod

    if args.follow and args.output in ("json", "yaml"):
        print("failovervm: error: --follow prints the raw log; it cannot be combined with -o json|yaml",
              file=sys.stderr)
        return 2
    ns = args.namespace or kube_mod.current_namespace(args.kubeconfig, args.context)
    try:
        domain = domxml.domain_name(ns, args.name)
    except ValueError as exc:
        print(f"failovervm: error: {exc}", file=sys.stderr)
        return 1
    log_dir = Path(args.log_dir) if args.log_dir else Path(args.state_dir) / "console"
    path = cli_ops.console_log_path(log_dir, domain)
    if not path.is_file():
        node, found = _vm_node_best_effort(args, ns)
        print(f"failovervm: error: {cli_ops.console_missing_message(path, ns, args.name, node, found)}",
              file=sys.stderr)
        return 1
    data = path.read_bytes()
    if args.output in ("json", "yaml"):
        _print_obj({"namespace": ns, "name": args.name, "domain": domain, "path": str(path),
                    "log": data.decode("utf-8", errors="replace")}, args.output)
        return 0
    out = sys.stdout.buffer
    out.write(data)
    out.flush()
    if args.follow:
        try:
            cli_ops.follow_file(path, out, offset=len(data))
        except KeyboardInterrupt:
            pass
    return 0


def _vm_node_best_effort(args: argparse.Namespace, ns: str) -> tuple[str | None, bool | None]:
    """(node the VM runs on, whether it exists); (None, None) when the API cannot tell."""
    try:
        vm = _kube_client(args).get_vm(ns, args.name)
    except Exception as exc:  # only enriches an error message
        print(f"failovervm: warning: could not look the VM up: {exc}", file=sys.stderr)
        return None, None
    if vm is None:
        return None, False
    return (vm.get("status") or {}).get("nodeName"), True


def _print_obj(obj: object, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(obj, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(obj, sort_keys=False))


def cmd_agent(args: argparse.Namespace) -> int:
    from failovervm.agent.main import AgentArgs, run

    return run(AgentArgs(
        node=args.node, libvirt_uri=args.libvirt_uri, sysfs_root=args.sysfs_root, kubeconfig=args.kubeconfig,
        storage_roots=args.storage_root, metrics_port=args.metrics_port, resync_seconds=args.resync_seconds,
        serial_log_dir=args.serial_log_dir, log_format=args.log_format, storage_grants=list(args.storage_grant),
        allow_tcp_migration=args.allow_tcp_migration,
    ))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="failovervm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_sandbox(sub, p.error)
    for add in (_add_controller, _add_agent, _add_migrate, _add_restart, _add_status, _add_evacuate, _add_console,
                _add_hold):
        add(sub)
    return p


def _add_hold(sub: Subcommands) -> None:
    ho = sub.add_parser("hold", help="the VM pod's container: wait for SIGTERM and exit (holds the VM's "
                                     "resources on its node; the domain itself runs in libvirtd)")
    ho.set_defaults(func=cmd_hold)


def cmd_hold(_args: argparse.Namespace) -> int:
    """Sleep until SIGTERM or SIGINT, then exit 0. As a container's PID 1 a signal without a handler
    is ignored, so the signals are blocked and waited for. Imports nothing beyond the standard library."""
    import signal

    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)
    return 0


def _add_sandbox(sub: Subcommands, usage_error: Callable[[str], NoReturn]) -> None:
    # Everything after `sandbox` goes to the sandbox's own parser, unparsed: no argument looks like
    # an option to this one (prefix_chars), so -h/--help reach the sandbox's too.
    sb = sub.add_parser("sandbox", help="local cluster: etcd + kube-apiserver + libvirt/QEMU nodes",
                        add_help=False, prefix_chars="\0")
    sb.add_argument("argv", nargs=argparse.REMAINDER)
    sb.set_defaults(func=cmd_sandbox, usage_error=usage_error)


def _add_controller(sub: Subcommands) -> None:
    ctl = sub.add_parser("controller", help="run the cluster controller (Kopf; one active replica via peering)")
    ctl.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, then $KUBECONFIG)")
    ctl.add_argument("--storage-root", action="append", default=[], required=True,
                     help="directory VM disks/kernels must live under, in <root>/<namespace>/ (repeatable)")
    ctl.add_argument("--storage-grant", action="append", default=[], type=_storage_grant, metavar="GRANT",
                     help="NAMESPACE=PATH[:ro]: the VMs of NAMESPACE ('*': of every namespace) may also use the files "
                          "under PATH, a directory inside a storage root (:ro: only as kernel, initrd, read-only disk "
                          "or backing file); by default a namespace's VMs only use <root>/<namespace>/ (repeatable)")
    ctl.add_argument("--webhook-host", default=None, help="serve the validating webhook on this address")
    ctl.add_argument("--webhook-port", type=int, default=9443)
    ctl.add_argument("--webhook-cert-dir", default=None,
                     help="ca.crt/tls.crt/tls.key; generated there when absent (self-signed)")
    ctl.add_argument("--webhook-unmanaged", action="store_true",
                     help="do not create the ValidatingWebhookConfiguration (Helm manages it)")
    ctl.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    ctl.add_argument("--health-port", type=int, default=None, help="liveness endpoint port")
    ctl.add_argument("--standalone", action="store_true", help="no peering (single replica, tests only)")
    ctl.add_argument("--priority", type=int, default=None,
                     help="Kopf peering priority of this replica (the highest live one is active; default: "
                          "by start time, so the oldest replica stays active and a new one waits)")
    ctl.add_argument("--peering-lifetime", type=_peering_lifetime, default=10, metavar="SECONDS",
                     help="how long a replica's peering entry lives without a keepalive: a standby takes "
                          "over at most this long after the active replica was killed; the active replica "
                          "stands down when it could not renew its entry for this less 3 s (default 10, "
                          "at least 6)")
    ctl.add_argument("--namespace", default="failovervm-system",
                     help="the operator's namespace")
    ctl.add_argument("--parallel-migrations-per-cluster", type=int, default=5)
    ctl.add_argument("--parallel-outbound-migrations-per-node", type=int, default=2)
    ctl.add_argument("--require-failover-ready", action="store_true",
                     help="refuse to migrate VMs whose guest has not negotiated failover (FailoverReady is not "
                          "True), which would lose VF traffic; the default runs them with a warning. A VM's "
                          "spec.requireFailoverReady overrides this")
    ctl.add_argument("--migration-history", type=_non_negative, default=5, metavar="N",
                     help="finished FailoverVMMigrations kept per VM (newest first); older ones, and all of "
                          "VMs that no longer exist, are deleted. The failed attempts of an evacuation still "
                          "going on are always kept (they are its retry count)")
    ctl.add_argument("--migration-handover-timeout", type=_non_negative, default=120, metavar="SECONDS",
                     help="how long a migration waits in TargetReady for the source node's agent to start it; "
                          "then it fails with SourceAgentUnresponsive and the VF reserved on the target is "
                          "released (0: wait forever). A live agent takes it within a second")
    ctl.add_argument("--migration-start-timeout", type=_non_negative, default=300, metavar="SECONDS",
                     help="how long a migration a user created may stay Pending or Scheduling (its targetNode "
                          "does not exist or has no room, ...) before it fails with StartTimeout and the reason "
                          "(0: wait forever). Evacuations wait as long as it takes")
    ctl.add_argument("--vm-pod-image", default=DEFAULT_IMAGE,
                     help="image of the VM pods' holder container, which runs `failovervm hold` (the Helm "
                          f"chart passes the controller's own image; default {DEFAULT_IMAGE})")
    ctl.add_argument("--vm-overhead-cpu", default="100m", type=_quantity, metavar="QUANTITY",
                     help="CPU a VM pod requests on top of the VM's vCPUs for QEMU's own threads and libvirt "
                          "(default 100m; see docs/capacity.md)")
    ctl.add_argument("--vm-overhead-memory", default="160Mi", type=_quantity, metavar="QUANTITY",
                     help="memory a VM pod requests on top of the guest's memory for QEMU itself (default "
                          "160Mi; see docs/capacity.md)")
    ctl.add_argument("--log-format", choices=["text", "json"], default="text",
                     help="json: one object per line with component, node and vm fields")
    ctl.set_defaults(func=cmd_controller)


def _add_agent(sub: Subcommands) -> None:
    ag = sub.add_parser("agent", help="run the node agent (libvirt domains and VF inventory of one node)")
    ag.add_argument("--node", required=True, help="this node's name (NODE_NAME from the downward API)")
    ag.add_argument("--libvirt-uri", default="qemu:///system")
    ag.add_argument("--sysfs-root", default="/sys", help="where to read SR-IOV VFs from")
    ag.add_argument("--kubeconfig", default=None)
    ag.add_argument("--storage-root", action="append", default=[], required=True)
    ag.add_argument("--storage-grant", action="append", default=[], type=_storage_grant, metavar="GRANT",
                    help="NAMESPACE=PATH[:ro]: the VMs of NAMESPACE ('*': of every namespace) may also use the files "
                         "under PATH, a directory inside a storage root (:ro: only as kernel, initrd, read-only disk "
                         "or backing file); by default a namespace's VMs only use <root>/<namespace>/ (repeatable)")
    ag.add_argument("--allow-tcp-migration", action="store_true",
                    help="also migrate to a node whose libvirt URI is qemu+tcp:// (unencrypted, unauthenticated "
                         "libvirt: only on a trusted, isolated network); by default only qemu+tls://")
    ag.add_argument("--metrics-port", type=int, default=8081)
    ag.add_argument("--resync-seconds", type=float, default=30.0)
    ag.add_argument("--serial-log-dir", default=None, help="write each VM's serial console to a file here")
    ag.add_argument("--log-format", choices=["text", "json"], default="text",
                    help="json: one object per line with component, node and vm fields")
    ag.set_defaults(func=cmd_agent)


def _add_migrate(sub: Subcommands) -> None:
    mi = sub.add_parser("migrate", help="live-migrate a FailoverVM (creates a FailoverVMMigration)")
    mi.add_argument("name", help="the FailoverVM")
    mi.add_argument("--to", default=None, help="target node (default: the operator picks one)")
    mi.add_argument("--wait", action="store_true", help="wait until the migration finishes")
    mi.add_argument("--bandwidth", type=int, default=None, help="limit the migration to this many MiB/s")
    mi.add_argument("--timeout", type=float, default=600)
    _kubectl_flags(mi)
    mi.set_defaults(func=cmd_migrate)


def _add_restart(sub: Subcommands) -> None:
    rs = sub.add_parser("restart", help="restart a FailoverVM's domain in place (applies a changed spec)")
    rs.add_argument("name", help="the FailoverVM")
    rs.add_argument("--wait", action="store_true", help="wait until it runs again")
    rs.add_argument("--timeout", type=float, default=300)
    _kubectl_flags(rs)
    rs.set_defaults(func=cmd_restart)


def _add_status(sub: Subcommands) -> None:
    stt = sub.add_parser("status", help="FailoverVMs, nodes and VF usage per pool and node")
    stt.add_argument("-A", "--all-namespaces", action="store_true",
                     help="FailoverVMs of every namespace (nodes and pools are cluster-wide anyway)")
    _kubectl_flags(stt)
    stt.set_defaults(func=cmd_status)


def _add_evacuate(sub: Subcommands) -> None:
    ev = sub.add_parser("evacuate", help="cordon a node: the operator moves its FailoverVMs away (--watch: follow)")
    ev.add_argument("node", help="the node to evacuate")
    ev.add_argument("--watch", action="store_true",
                    help="show progress until no FailoverVM is left on the node (exit 0) or --timeout (exit 1)")
    ev.add_argument("--timeout", type=float, default=600, help="seconds to watch (default 600)")
    ev.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    _kubectl_flags(ev)
    ev.set_defaults(func=cmd_evacuate)


def _add_console(sub: Subcommands) -> None:
    co = sub.add_parser("console", help="print a FailoverVM's serial console log (--follow: keep reading)")
    co.add_argument("name", help="the FailoverVM")
    co.add_argument("-f", "--follow", action="store_true", help="keep printing what the guest writes")
    co.add_argument("--state-dir", default=SANDBOX_STATE_DIR,
                    help=f"sandbox state directory; the log is in <state-dir>/console (default {SANDBOX_STATE_DIR})")
    co.add_argument("--log-dir", default=None,
                    help="the agent's --serial-log-dir, when reading the log on a node (overrides --state-dir)")
    _kubectl_flags(co)
    co.set_defaults(func=cmd_console)


def _kubectl_flags(p: argparse.ArgumentParser) -> None:
    """The kubectl conventions: --kubeconfig, --context, -n/--namespace, -o."""
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FailoverVMError as exc:
        print(f"failovervm: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
