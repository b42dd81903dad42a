"""Turning FailoverVM / VFPool objects (plain dicts from the API) into domain-logic values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from failovervm import domxml
from failovervm.quantity import to_mib
from failovervm.scheduling import PoolInfo
from failovervm.storage import confine_path


def vm_key(vm: Mapping[str, Any]) -> str:
    meta = vm["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def pool_info(pool: Mapping[str, Any]) -> PoolInfo:
    selector = (pool.get("spec") or {}).get("nodeSelector") or {}
    return PoolInfo(name=pool["metadata"]["name"], node_selector=dict(selector))


def vm_mac(vm: Mapping[str, Any]) -> str:
    """The VM's MAC: spec.network.mac, else the one recorded in status, else a stable one from its UID."""
    spec_mac = ((vm.get("spec") or {}).get("network") or {}).get("mac")
    if spec_mac:
        return domxml.normalize_mac(spec_mac)
    status_mac = (vm.get("status") or {}).get("mac")
    if status_mac:
        return str(status_mac)
    return domxml.generate_mac(vm["metadata"]["uid"])


def standby_spec(pool: Mapping[str, Any]) -> domxml.StandbySpec:
    sb = (pool.get("spec") or {}).get("standby") or {}
    return domxml.StandbySpec(
        type=sb.get("type", "bridge"), source=sb.get("source", "fvmsbr0"), mode=sb.get("mode") or "bridge"
    )


def guest_paths(vm: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field path, host path) of every host file the VM spec names."""
    spec = vm.get("spec") or {}
    out = [(f"spec.disks[{d.get('name')}].path", str(d.get("path", ""))) for d in spec.get("disks") or []]
    for key in ("kernel", "initrd"):
        if spec.get(key):
            out.append((f"spec.{key}", str(spec[key])))
    return out


def domain_spec(
    vm: Mapping[str, Any],
    pool: Mapping[str, Any],
    *,
    storage_roots: Sequence[str],
    vf: str | None,
    vf_node: str | None,
    kvm_available: bool,
    serial_log: str | None = None,
) -> domxml.DomainSpec:
    """The libvirt domain for `vm`. Raises ValueError (incl. PathNotAllowed) for a bad spec."""
    spec = vm.get("spec") or {}
    meta = vm["metadata"]
    disks = tuple(
        domxml.DiskSpec(
            name=d["name"],
            path=confine_path(str(d["path"]), storage_roots),
            format=d.get("format", "raw"),
            bus=d.get("bus", "virtio"),
            read_only=bool(d.get("readOnly", False)),
            boot_order=d.get("bootOrder"),
        )
        for d in spec.get("disks") or []
    )
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
        kernel=confine_path(spec["kernel"], storage_roots) if spec.get("kernel") else None,
        initrd=confine_path(spec["initrd"], storage_roots) if spec.get("initrd") else None,
        cmdline=spec.get("cmdline"),
    )
