"""The `failovervm` command line (also installed as the kubectl plugin `kubectl-failovervm`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from failovervm.errors import FailoverVMError


def _sandbox_opts(args: argparse.Namespace) -> object:
    from failovervm.sandbox.manager import Options

    return Options(
        state_dir=Path(args.state_dir),
        images_dir=Path(getattr(args, "images_dir", None) or Path(args.state_dir) / "images"),
        nodes=getattr(args, "nodes", None),
        vfs_per_node=getattr(args, "vfs_per_node", None),
        pfs_per_node=getattr(args, "pfs_per_node", None),
        address_base=getattr(args, "address_base", "127.0.0.10"),
        bridge=getattr(args, "bridge", "fvmsbr0"),
        operator=not getattr(args, "no_operator", False),
    )


def cmd_sandbox(args: argparse.Namespace) -> int:
    from failovervm.sandbox import manager

    opts = _sandbox_opts(args)
    assert isinstance(opts, manager.Options)
    if args.action == "up":
        state = manager.up(opts)
        print(f"export KUBECONFIG={state.kubeconfig}")
        return 0
    if args.action == "down":
        manager.down(opts)
        return 0
    if args.action == "status":
        st = manager.status(opts)
        if args.output == "json":
            print(json.dumps(st, indent=2))
        else:
            if not st["components"]:
                print(f"no sandbox in {st['state_dir']}")
                return 1
            print(f"state: {st['state_dir']}   kubeconfig: {st['kubeconfig']}   accel: {st['accel']} "
                  f"({st['accel_detail']})")
            print(f"{'COMPONENT':34} {'PID':>8} {'STATE':8} {'RSS(MiB)':>9}  DETAIL")
            for r in st["components"]:
                state_word = "ok" if r["ok"] else ("running" if r["running"] else "DOWN")
                print(f"{r['component']:34} {r['pid'] or '-':>8} {state_word:8} {r['rss_mib']:>9}  {r['detail']}")
            print(f"total RSS (incl. QEMU): {st['total_rss_mib']} MiB")
        return 0 if st["ok"] else 1
    if args.action == "heartbeat":
        from failovervm.sandbox import nodes

        state = manager.State(opts.state_dir.resolve())
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        version = state.data.get("versions", {}).get("KUBERNETES_VERSION", "v0.0.0")
        nodes.heartbeat(str(state.kubeconfig), state.sandbox_nodes(), version)
        return 0
    raise AssertionError(args.action)


def cmd_controller(args: argparse.Namespace) -> int:
    from failovervm.controller.main import ControllerArgs, run

    return run(ControllerArgs(
        kubeconfig=args.kubeconfig, storage_roots=args.storage_root, webhook_host=args.webhook_host,
        webhook_port=args.webhook_port, webhook_cert_dir=args.webhook_cert_dir,
        webhook_managed=not args.webhook_unmanaged, metrics_port=args.metrics_port,
        health_port=args.health_port, peering=not args.standalone, namespace=args.namespace,
        parallel_migrations_per_cluster=args.parallel_migrations_per_cluster,
        parallel_outbound_migrations_per_node=args.parallel_outbound_migrations_per_node,
        guard_image=args.guard_image,
    ))


def cmd_migrate(args: argparse.Namespace) -> int:
    from failovervm import kube as kube_mod

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
        "apiVersion": "failovervm.io/v1alpha1", "kind": "FailoverVMMigration",
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
                      f"downtime={stats.get('downtimeMs', '-')}ms {st.get('reason', '')} {st.get('message', '')}")
            return 0 if st["phase"] == "Succeeded" else 1
        time.sleep(0.5)
    print(f"failovervm: error: {name} did not finish within {args.timeout}s", file=sys.stderr)
    return 1


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
        serial_log_dir=args.serial_log_dir,
    ))


def build_parser() -> argparse.ArgumentParser:
    from failovervm.sandbox.manager import DEFAULT_STATE_DIR

    p = argparse.ArgumentParser(prog="failovervm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sb = sub.add_parser("sandbox", help="local cluster: etcd + kube-apiserver + libvirt/QEMU nodes")
    sbs = sb.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                        help=f"where the sandbox keeps its state (default {DEFAULT_STATE_DIR})")
    up = sbs.add_parser("up", parents=[common], help="start the sandbox (idempotent)")
    up.add_argument("--nodes", type=int, default=None,
                    help="number of libvirt nodes (default 2, or the running sandbox's)")
    up.add_argument("--vfs-per-node", type=int, default=None, help="simulated SR-IOV VFs per PF (default 8)")
    up.add_argument("--pfs-per-node", type=int, default=None,
                    help="simulated PFs per node, named sbxpf0, sbxpf1, ... (default 1)")
    up.add_argument("--images-dir", default=None,
                    help="shared image directory (stands in for NFS/Ceph); default <state-dir>/images")
    up.add_argument("--address-base", default="127.0.0.10",
                    help="node N's libvirtd listens on this loopback address + N (default 127.0.0.10)")
    up.add_argument("--bridge", default="fvmsbr0", help="Linux bridge for the virtio standby NICs")
    up.add_argument("--no-operator", action="store_true", help="do not start the operator processes")
    sbs.add_parser("down", parents=[common], help="stop everything `up` started and remove its state")
    st = sbs.add_parser("status", parents=[common], help="report each component")
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    sbs.add_parser("heartbeat", parents=[common], help=argparse.SUPPRESS)
    sb.set_defaults(func=cmd_sandbox)

    ctl = sub.add_parser("controller", help="run the cluster controller (Kopf; one active replica via peering)")
    ctl.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, then $KUBECONFIG)")
    ctl.add_argument("--storage-root", action="append", default=[], required=True,
                     help="directory VM disks/kernels must live under (repeatable)")
    ctl.add_argument("--webhook-host", default=None, help="serve the validating webhook on this address")
    ctl.add_argument("--webhook-port", type=int, default=9443)
    ctl.add_argument("--webhook-cert-dir", default=None,
                     help="ca.crt/tls.crt/tls.key; generated there when absent (self-signed)")
    ctl.add_argument("--webhook-unmanaged", action="store_true",
                     help="do not create the ValidatingWebhookConfiguration (Helm manages it)")
    ctl.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    ctl.add_argument("--health-port", type=int, default=None, help="liveness endpoint port")
    ctl.add_argument("--standalone", action="store_true", help="no peering (single replica, tests only)")
    ctl.add_argument("--namespace", default="failovervm-system",
                     help="the operator's namespace (drain guard pods live here)")
    ctl.add_argument("--parallel-migrations-per-cluster", type=int, default=5)
    ctl.add_argument("--parallel-outbound-migrations-per-node", type=int, default=2)
    ctl.add_argument("--guard-image", default="registry.k8s.io/pause:3.10",
                     help="image of the per-node drain guard pods (never does any work)")
    ctl.set_defaults(func=cmd_controller)

    ag = sub.add_parser("agent", help="run the node agent (libvirt domains and VF inventory of one node)")
    ag.add_argument("--node", required=True, help="this node's name (NODE_NAME from the downward API)")
    ag.add_argument("--libvirt-uri", default="qemu:///system")
    ag.add_argument("--sysfs-root", default="/sys", help="where to read SR-IOV VFs from")
    ag.add_argument("--kubeconfig", default=None)
    ag.add_argument("--storage-root", action="append", default=[], required=True)
    ag.add_argument("--metrics-port", type=int, default=8081)
    ag.add_argument("--resync-seconds", type=float, default=30.0)
    ag.add_argument("--serial-log-dir", default=None, help="write each VM's serial console to a file here")
    ag.set_defaults(func=cmd_agent)

    mi = sub.add_parser("migrate", help="live-migrate a FailoverVM (creates a FailoverVMMigration)")
    mi.add_argument("name", help="the FailoverVM")
    mi.add_argument("--to", default=None, help="target node (default: the operator picks one)")
    mi.add_argument("--wait", action="store_true", help="wait until the migration finishes")
    mi.add_argument("--bandwidth", type=int, default=None, help="limit the migration to this many MiB/s")
    mi.add_argument("--timeout", type=float, default=600)
    _kubectl_flags(mi)
    mi.set_defaults(func=cmd_migrate)
    return p


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
