"""`failovervm sandbox up|down|status|node-down|node-up`: the sandbox's own command line.

`failovervm sandbox ARGS` imports this module only when that command runs and hands it ARGS
(failovervm.cli.cmd_sandbox), so the product's other commands never load the sandbox.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from failovervm_sandbox import manager, nodes
from failovervm_sandbox.state import DEFAULT_STATE_DIR, Options, State


def build_parser(prog: str = "failovervm sandbox") -> argparse.ArgumentParser:
    sb = argparse.ArgumentParser(prog=prog)
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
    up.add_argument("--virtual-nodes", type=int, default=None,
                    help="agent-less Nodes (no libvirtd, no agent) with --vfs-per-node VFs each, published as an "
                         "agent would and kept Ready by the heartbeat; VMs placed there never start (default 0)")
    up.add_argument("--images-dir", default=None,
                    help="shared image directory (stands in for NFS/Ceph); default <state-dir>/images")
    up.add_argument("--address-base", default="127.0.0.10",
                    help="node N's libvirtd listens on this loopback address + N (default 127.0.0.10)")
    up.add_argument("--bridge", default="fvmsbr0", help="Linux bridge for the virtio standby NICs")
    up.add_argument("--profiling", action="store_true",
                    help="kube-apiserver serves /debug/pprof (to the admin credentials; for benchmarks' --pprof); "
                         "off by default; applies when `up` starts kube-apiserver (the first `up`), kept until `down`")
    up.add_argument("--no-operator", action="store_true", help="do not start the operator processes")
    up.set_defaults(func=cmd_up)
    down = sbs.add_parser("down", parents=[common], help="stop everything `up` started and remove its state")
    down.set_defaults(func=cmd_down)
    st = sbs.add_parser("status", parents=[common], help="report each component")
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    st.set_defaults(func=cmd_status)
    hb = sbs.add_parser("heartbeat", parents=[common], help=argparse.SUPPRESS)
    hb.set_defaults(func=cmd_heartbeat)
    nd = sbs.add_parser("node-down", parents=[common],
                        help="simulate a machine failure: kill the node's VMs, stop its libvirtd, agent and heartbeat")
    nd.add_argument("node")
    nd.set_defaults(func=cmd_node_down)
    nu = sbs.add_parser("node-up", parents=[common], help="bring a node stopped by node-down back")
    nu.add_argument("node")
    nu.set_defaults(func=cmd_node_up)
    return sb


def run(argv: Sequence[str], usage_error: Callable[[str], NoReturn] | None = None) -> int:
    """Parse and run one sandbox command. Arguments no sandbox command takes are reported with
    `usage_error` (`failovervm`'s own parser's, when it handed the arguments over)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        (usage_error or parser.error)(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args))


def _options(args: argparse.Namespace) -> Options:
    return Options(
        state_dir=Path(args.state_dir),
        images_dir=Path(getattr(args, "images_dir", None) or Path(args.state_dir) / "images"),
        nodes=getattr(args, "nodes", None),
        vfs_per_node=getattr(args, "vfs_per_node", None),
        pfs_per_node=getattr(args, "pfs_per_node", None),
        virtual_nodes=getattr(args, "virtual_nodes", None),
        address_base=getattr(args, "address_base", "127.0.0.10"),
        bridge=getattr(args, "bridge", "fvmsbr0"),
        operator=not getattr(args, "no_operator", False),
        profiling=getattr(args, "profiling", False),
    )


def cmd_up(args: argparse.Namespace) -> int:
    state = manager.up(_options(args))
    print(f"export KUBECONFIG={state.kubeconfig}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    manager.down(_options(args))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = manager.status(_options(args))
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


def cmd_heartbeat(args: argparse.Namespace) -> int:
    opts = _options(args)
    state = State(opts.state_dir.resolve())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    version = state.data.get("versions", {}).get("KUBERNETES_VERSION", "v0.0.0")
    virtual = state.virtual_nodes()
    publisher = None
    if virtual:
        from failovervm_sandbox import virtualnodes

        publisher = virtualnodes.Publisher.from_kubeconfig(str(state.kubeconfig), virtual)
    nodes.heartbeat(str(state.kubeconfig), [*state.sandbox_nodes(), *virtual], version,
                    down=lambda: manager.down_nodes(opts.state_dir.resolve()),
                    slow={n.name for n in virtual}, publish=publisher.round if publisher else None)
    return 0


def cmd_node_down(args: argparse.Namespace) -> int:
    manager.node_down(_options(args), args.node)
    return 0


def cmd_node_up(args: argparse.Namespace) -> int:
    manager.node_up(_options(args), args.node)
    return 0
