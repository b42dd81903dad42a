"""`failovervm agent`: reconciles this node's FailoverVMs into libvirt domains.

Event sources, all feeding one de-duplicating work queue (one reconcile per VM at a time):
- a Kubernetes watch of FailoverVMs with the server-side label selector failovervm.io/node=<node>;
- libvirt lifecycle and reboot events (through libvirtaio), so a guest shutdown or crash shows promptly;
- QEMU's FAILOVER_NEGOTIATED monitor event, so FailoverReady turns True as soon as the guest acks it;
- a periodic resync, which also removes domains whose FailoverVM is gone;
- requeues asked for by a reconcile (VF hot-plug backoff, transient errors).

Apart from the queue, the inventory round (at start, on every change of a VFPool or of its own Node,
and every `inventory_seconds` for sysfs changes) publishes the node's VFs into its VFInventory and
keeps the Node's extended resources `vf.failovervm.io/<pool>` true, writing either only when it
differs (agent/inventory.py). The VFPools and the Node come from watches (agent/mirror.py): a
round reads nothing from the API server.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failovervm import API_GROUP, API_VERSION, domxml, kubeclient, labels
from failovervm import kube as kube_mod
from failovervm.agent.connection import LibvirtConnection
from failovervm.agent.domains import DomainNotFound
from failovervm.agent.inventory import Published, publish, publish_node
from failovervm.agent.libvirt_domains import LibvirtDomainManager
from failovervm.agent.mirror import KeyFeed, Mirror
from failovervm.agent.reconcile import AgentContext, reconcile
from failovervm.agent.slots import Slots
from failovervm.metrics import RECONCILE_ERRORS, start_metrics
from failovervm.storage import StorageGrant

log = logging.getLogger(__name__)


def domain_vanished(exc: BaseException) -> bool:
    """A reconcile failed because its domain disappeared under it (libvirt VIR_ERR_NO_DOMAIN)."""
    return isinstance(exc, DomainNotFound)


@dataclass
class AgentArgs:
    node: str
    libvirt_uri: str
    sysfs_root: str
    kubeconfig: str | None
    storage_roots: list[str]
    metrics_port: int
    resync_seconds: float = 30.0
    inventory_seconds: float = 5.0
    workers: int = 4
    serial_log_dir: str | None = None
    log_format: str = "text"
    storage_grants: list[StorageGrant] = field(default_factory=list)
    allow_tcp_migration: bool = False


class WorkQueue:
    """Keys (namespace/name) waiting for reconcile; a key is never processed twice at once."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()

    def add(self, key: str) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    async def get(self) -> str:
        key = await self._queue.get()
        self._pending.discard(key)
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)


class Agent:
    def __init__(self, args: AgentArgs) -> None:
        self.args = args
        self.kube = kube_mod.Kube(kube_mod.load(args.kubeconfig))
        self.queue = WorkQueue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.conn = LibvirtConnection(args.libvirt_uri, args.node, self._on_domain_event, self._on_reconnect)
        self.ctx: AgentContext | None = None
        self.migrator: Any = None
        self.published = Published()  # what the inventory round last wrote (agent.inventory)
        # The VFPools and this Node, from watches: the inventory round reads neither from the API.
        self.pools = Mirror(self.kube.api, kubeclient.custom_path(API_GROUP, API_VERSION, kube_mod.VFPOOL),
                            f"{API_GROUP}/{API_VERSION}", "VFPool", self._inventory_soon)
        self.node_obj = Mirror(self.kube.api, kubeclient.core_path("nodes"), "v1", "Node", self._inventory_soon,
                               field_selector=f"metadata.name={args.node}")
        self._inventory_queued = False
        # `workers` reconciles at a time, not counting those waiting for a guest to shut down
        # (agent.slots); their threads come from a pool of their own, never asyncio's default one.
        self.slots = Slots(args.workers)
        self._tasks: set[asyncio.Task[None]] = set()
        self.pool = ThreadPoolExecutor(max_workers=max(64, 4 * args.workers), thread_name_prefix="reconcile")

    # -- event sources ---------------------------------------------------------------
    def _on_domain_event(self, dom_name: str, event: str, detail: int) -> None:
        parsed = domxml.parse_domain_name(dom_name)
        if parsed:
            log.info("domain %s: %s (detail %d)", dom_name, event, detail)
            if event in ("Started", "Rebooted") and self.ctx is not None:
                self.ctx.failover_checks.pop(dom_name, None)  # a new boot (or arrival): check soon again
            self.queue.add(f"{parsed[0]}/{parsed[1]}")

    def _on_reconnect(self) -> None:
        assert self.conn.conn is not None
        dm = LibvirtDomainManager(self.conn.conn)
        kvm = dm.kvm_available()
        self.ctx = AgentContext(
            node=self.args.node, kube=self.kube, dm=dm,
            storage_roots=[str(Path(r).resolve()) for r in self.args.storage_roots],
            storage_grants=tuple(self.args.storage_grants), allow_tcp_migration=self.args.allow_tcp_migration,
            sysfs_root=Path(self.args.sysfs_root), kvm=kvm,
            vf_state=self.ctx.vf_state if self.ctx else {}, serial_log_dir=self.args.serial_log_dir,
            failover_checks=self.ctx.failover_checks if self.ctx else {},
            failover_status=self.ctx.failover_status if self.ctx else {},
            slow=self.slots.slow,
        )
        from failovervm.agent.migrate import Migrator

        migrator = self.migrator
        if migrator is None:
            migrator = self.migrator = Migrator(self.ctx)
        migrator.ctx = self.ctx
        self.ctx.migration_hook = migrator.handle
        log.info("libvirt host %s: KVM %s", self.args.libvirt_uri, "available" if kvm else "NOT available (TCG)")
        asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        try:
            vms = await asyncio.to_thread(self.kube.list_vms, f"{labels.VM_NODE}={self.args.node}")
            for vm in vms:
                self.queue.add(f"{vm['metadata']['namespace']}/{vm['metadata']['name']}")
            if self.ctx is not None:
                owned = await asyncio.to_thread(self.ctx.dm.owned_domains)
                for info in owned:
                    assert info.owner is not None
                    self.queue.add(f"{info.owner.namespace}/{info.owner.name}")
                # Domains that left (migrated away, removed) drop out of the FailoverReady gauge.
                self.ctx.prune_failover({i.name for i in owned if i.active})
        except Exception as exc:
            log.warning("resync failed: %s", exc)

    async def _periodic(self, seconds: float, fn: object) -> None:
        while True:
            await asyncio.sleep(seconds)
            if callable(fn):
                await fn()

    def _inventory_soon(self) -> None:
        """A VFPool or the Node changed (called from a watch thread): one inventory round soon."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._queue_inventory)

    def _queue_inventory(self) -> None:
        if not self._inventory_queued:
            self._inventory_queued = True
            asyncio.get_running_loop().create_task(self._inventory())

    async def _inventory(self) -> None:
        self._inventory_queued = False
        sysfs = Path(self.args.sysfs_root)
        try:
            if self.pools.ready.is_set() and self.node_obj.ready.is_set():
                node_obj = self.node_obj.get(self.args.node)
                if node_obj is None:
                    return  # the Node is gone: its inventory goes with it (garbage collector)
                counts = await asyncio.to_thread(publish_node, self.kube, node_obj, self.pools.objects(), sysfs,
                                                 self.published)
            else:  # the watches have not listed yet: read them
                counts = await asyncio.to_thread(publish, self.kube, self.args.node, sysfs, self.published)
            log.debug("published VF inventory: %s", counts)
        except Exception as exc:
            log.warning("publishing the VF inventory failed: %s", exc)

    # -- workers -------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        """Hand each queued VM to a reconcile as soon as a slot is free."""
        while True:
            await self.slots.acquire()
            key = await self.queue.get()
            task = asyncio.get_running_loop().create_task(self._process(key))
            self._tasks.add(task)  # a reference until it ends (the loop keeps only weak ones)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, key: str) -> None:
        try:
            await self._reconcile(key)
        finally:
            self.slots.release()

    async def _reconcile(self, key: str) -> None:
        try:
            await self.conn.connected.wait()
            assert self.ctx is not None
            ns, name = key.split("/", 1)
            outcome = await asyncio.get_running_loop().run_in_executor(self.pool, reconcile, self.ctx, ns, name)
            log.debug("reconciled %s: %s", key, outcome.action, extra={"vm": key})
            if outcome.requeue_after:
                self.queue.add_after(key, outcome.requeue_after)
        except Exception as exc:
            if domain_vanished(exc):
                # Migrated off (UNDEFINE_SOURCE) or removed between lookup and use: a race with
                # the event that queued this reconcile, not a failure. The next one sees it gone.
                log.info("domain of %s went away during its reconcile (%s); reconciling again", key, exc,
                         extra={"vm": key})
                self.queue.add_after(key, 1.0)
                return
            RECONCILE_ERRORS.labels("agent", "FailoverVM").inc()
            log.exception("reconcile of %s failed: %s", key, exc, extra={"vm": key})
            if "connection" in str(exc).lower() or "broken pipe" in str(exc).lower():
                self.conn.lost()
            self.queue.add_after(key, 5.0)
        finally:
            self.queue.done(key)

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        start_metrics(self.args.metrics_port)
        if self.args.serial_log_dir:
            Path(self.args.serial_log_dir).mkdir(parents=True, exist_ok=True)
        tasks = [
            asyncio.create_task(self.conn.run()),
            asyncio.create_task(self._inventory()),
            asyncio.create_task(self._periodic(self.args.resync_seconds, self._resync)),
            asyncio.create_task(self._periodic(self.args.inventory_seconds, self._inventory)),
            asyncio.create_task(self._dispatch()),
        ]
        # Its own FailoverVMs (server-side label selector), each change to the work queue.
        loop = asyncio.get_running_loop()
        vm_feed = KeyFeed(self.kube.api, kubeclient.custom_path(API_GROUP, API_VERSION, kube_mod.FVM),
                          lambda key: loop.call_soon_threadsafe(self.queue.add, key),
                          label_selector=f"{labels.VM_NODE}={self.args.node}").start()
        self.pools.start()
        self.node_obj.start()
        log.info("agent for node %s started (libvirt %s)", self.args.node, self.args.libvirt_uri)
        await stop.wait()
        vm_feed.stop()
        self.pools.stop()
        self.node_obj.stop()
        for t in tasks:
            t.cancel()


def run(args: AgentArgs) -> int:
    from failovervm.logs import configure

    configure("agent", args.node, args.log_format)
    asyncio.run(Agent(args).run())
    return 0
