"""Turning FailoverVM / VFPool objects (plain dicts from the API) into domain-logic values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from failovervm import domxml
from failovervm.quantity import to_mib
from failovervm.scheduling import PoolInfo
from failovervm.storage import StoragePolicy
from failovervm.tenancy import MacRange


def vm_key(vm: Mapping[str, Any]) -> str:
    meta = vm["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def pool_info(pool: Mapping[str, Any]) -> PoolInfo:
    selector = (pool.get("spec") or {}).get("nodeSelector") or {}
    return PoolInfo(name=pool["metadata"]["name"], node_selector=dict(selector))


def vm_mac(vm: Mapping[str, Any], mac_range: MacRange | None = None) -> str:
    """The VM's MAC: spec.network.mac, else the one recorded in status, else a stable one from its UID
    (inside its pool's spec.macRange when the pool has one)."""
    spec_mac = ((vm.get("spec") or {}).get("network") or {}).get("mac")
    if spec_mac:
        return domxml.normalize_mac(spec_mac)
    status_mac = (vm.get("status") or {}).get("mac")
    if status_mac:
        return str(status_mac)
    if mac_range is not None:
        return mac_range.generate(vm["metadata"]["uid"])
    return domxml.generate_mac(vm["metadata"]["uid"])


def standby_spec(pool: Mapping[str, Any]) -> domxml.StandbySpec:
    sb = (pool.get("spec") or {}).get("standby") or {}
    return domxml.StandbySpec(
        type=sb.get("type", "bridge"), source=sb.get("source", "fvmsbr0"), mode=sb.get("mode") or "bridge"
    )


def guest_paths(vm: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(field path, host path, opened for writing) of every host file the VM spec names: its disks,
    their declared backing files (read-only), kernel and initrd (read-only)."""
    spec = vm.get("spec") or {}
    out: list[tuple[str, str, bool]] = []
    for d in spec.get("disks") or []:
        field = f"spec.disks[{d.get('name')}]"
        out.append((f"{field}.path", str(d.get("path", "")), not d.get("readOnly", False)))
        for i, layer in enumerate(d.get("backingChain") or []):
            out.append((f"{field}.backingChain[{i}].path", str(layer.get("path", "")), False))
    for key in ("kernel", "initrd"):
        if spec.get(key):
            out.append((f"spec.{key}", str(spec[key]), False))
    return out


def _disk(d: Mapping[str, Any], namespace: str, storage: StoragePolicy) -> domxml.DiskSpec:
    read_only = bool(d.get("readOnly", False))
    return domxml.DiskSpec(
        name=d["name"],
        path=storage.confine(str(d["path"]), namespace, write=not read_only),
        format=d.get("format", "raw"),
        bus=d.get("bus", "virtio"),
        read_only=read_only,
        boot_order=d.get("bootOrder"),
        backing=tuple(domxml.BackingSpec(path=storage.confine(str(b["path"]), namespace, write=False),
                                         format=b.get("format", "qcow2"))
                      for b in d.get("backingChain") or []),
    )


def domain_spec(
    vm: Mapping[str, Any],
    pool: Mapping[str, Any],
    *,
    storage: StoragePolicy,
    vf: str | None,
    vf_node: str | None,
    kvm_available: bool,
    serial_log: str | None = None,
) -> domxml.DomainSpec:
    """The libvirt domain for `vm`. Raises ValueError (incl. PathNotAllowed) for a bad spec."""
    spec = vm.get("spec") or {}
    meta = vm["metadata"]
    namespace = meta["namespace"]
    disks = tuple(_disk(d, namespace, storage) for d in spec.get("disks") or [])
    accel: Literal["kvm", "qemu"] = "kvm" if spec.get("accel", "kvm") == "kvm" and kvm_available else "qemu"
    return domxml.DomainSpec(
        name=domxml.domain_name(meta["namespace"], meta["name"]),
        uuid=meta["uid"],
        namespace=meta["namespace"],
        vm_name=meta["name"],
        vm_uid=meta["uid"],
        vcpus=int(spec.get("cpu", 1)),
        memory_mib=to_mib(spec.get("memory", "128Mi")),
        mac=vm_mac(vm),
        disks=disks,
        standby=standby_spec(pool),
        vf=domxml.PCIAddress.parse(vf) if vf else None,
        vf_node=vf_node,
        accel=accel,
        serial_log=serial_log,
        kernel=storage.confine(spec["kernel"], namespace, write=False) if spec.get("kernel") else None,
        initrd=storage.confine(spec["initrd"], namespace, write=False) if spec.get("initrd") else None,
        cmdline=spec.get("cmdline"),
    )
