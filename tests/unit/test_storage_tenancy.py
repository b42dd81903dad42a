"""Per-namespace storage (failovervm.storage.StoragePolicy) and explicit backing chains
(check_chain), issue #14."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from failovervm import domxml
from failovervm.storage import BackingChainRefused, Layer, PathNotAllowed, StorageGrant, StoragePolicy, check_chain
from failovervm.validation import validate_vm


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = Path(os.path.realpath(tmp_path)) / "images"
    for d in ("team-a", "team-b", "shared", "catalogue"):
        (r / d).mkdir(parents=True)
    return r


def test_a_namespace_uses_only_its_own_directory(root: Path) -> None:
    policy = StoragePolicy((str(root),))
    assert policy.confine(str(root / "team-a" / "disk.img"), "team-a", write=True) == str(root / "team-a" / "disk.img")
    with pytest.raises(PathNotAllowed, match="namespace 'team-a' may only use <storage root>/team-a/"):
        policy.confine(str(root / "team-b" / "disk.img"), "team-a", write=False)
    with pytest.raises(PathNotAllowed):
        policy.confine(str(root / "disk.img"), "team-a", write=False)  # the root itself is nobody's
    with pytest.raises(PathNotAllowed):
        policy.confine(str(root / "team-a-x" / "disk.img"), "team-a", write=False)  # a prefix is not a parent


def test_a_symlink_out_of_the_namespace_directory_is_refused(root: Path) -> None:
    (root / "team-b" / "secret.img").write_bytes(b"b")
    (root / "team-a" / "link.img").symlink_to(root / "team-b" / "secret.img")
    with pytest.raises(PathNotAllowed, match="resolves to"):
        StoragePolicy((str(root),)).confine(str(root / "team-a" / "link.img"), "team-a", write=False)


def test_grants_add_directories_and_read_only_grants_never_a_writable_disk(root: Path) -> None:
    policy = StoragePolicy((str(root),), (StorageGrant.parse(f"team-a={root}/shared"),
                                          StorageGrant.parse(f"*={root}/catalogue:ro")))
    assert policy.confine(str(root / "shared" / "x.img"), "team-a", write=True)
    with pytest.raises(PathNotAllowed):
        policy.confine(str(root / "shared" / "x.img"), "team-b", write=False)
    for ns in ("team-a", "team-b"):
        assert policy.confine(str(root / "catalogue" / "base.qcow2"), ns, write=False)
        with pytest.raises(PathNotAllowed, match="writable"):
            policy.confine(str(root / "catalogue" / "base.qcow2"), ns, write=True)


@pytest.mark.parametrize("text", ["team-a", "=/x", "team-a=relative", "Team_A=/x", "team-a=/x/../y"])
def test_malformed_grants_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid storage grant"):
        StorageGrant.parse(text)


def test_a_grant_outside_every_root_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="not inside a storage root"):
        StoragePolicy((str(root),), (StorageGrant("team-a", "/etc"),))


def _vm(ns: str, **spec: object) -> dict[str, object]:
    return {"metadata": {"name": "vm", "namespace": ns, "uid": "u1"},
            "spec": {"network": {"pool": "p"}, **spec}}


def test_admission_names_the_field_and_the_rule(root: Path) -> None:
    policy = StoragePolicy((str(root),))
    other = str(root / "team-b" / "disk.img")
    vm = _vm("team-a", kernel=other, initrd=other,
             disks=[{"name": "d", "path": str(root / "team-a" / "top.qcow2"), "format": "qcow2",
                     "backingChain": [{"path": other}]}])
    errors = validate_vm(vm, others=[], pool_exists=True, storage=policy)
    fields = sorted(e.split(":")[0] for e in errors)
    assert fields == ["spec.disks[d].backingChain[0].path", "spec.initrd", "spec.kernel"], errors
    assert all("namespace 'team-a' may only use" in e for e in errors)


def _info(fmt: str, backing: str | None = None, backing_fmt: str | None = None) -> dict[str, object]:
    info: dict[str, object] = {"format": fmt}
    if backing:
        info["backing-filename"] = info["full-backing-filename"] = backing
    if backing_fmt:
        info["backing-filename-format"] = backing_fmt
    return info


def _reader(declared: list[Layer], infos: list[dict[str, object]]) -> Any:
    return lambda layer: infos[declared.index(layer)]


def test_check_chain_accepts_exactly_the_declared_chain() -> None:
    one = [Layer("/r/ns/top", "raw")]
    check_chain("spec.disks[d]", one, _reader(one, [_info("raw")]))
    two = [Layer("/r/ns/top", "qcow2"), Layer("/r/ns/base", "raw")]
    check_chain("spec.disks[d]", two, _reader(two, [_info("qcow2", "/r/ns/base", "raw"), _info("raw")]))


@pytest.mark.parametrize("declared,infos,match", [
    # the attack: a raw disk the guest wrote a qcow2 header onto, switched to qcow2
    ([Layer("/r/ns/top", "qcow2")], [_info("qcow2", "/etc/shadow")], "which backingChain does not declare"),
    ([Layer("/r/ns/top", "qcow2"), Layer("/r/ns/base", "qcow2")], [_info("qcow2", "/r/other/base"), _info("qcow2")],
     "but backingChain declares '/r/ns/base'"),
    ([Layer("/r/ns/top", "qcow2"), Layer("/r/ns/base", "raw")], [_info("qcow2", "/r/ns/base", "qcow2"), _info("raw")],
     "in format 'qcow2'"),
    ([Layer("/r/ns/top", "qcow2"), Layer("/r/ns/base", "qcow2")], [_info("qcow2"), _info("qcow2")],
     "has no backing file"),
    ([Layer("/r/ns/top", "qcow2")], [_info("raw")], "not the declared format"),
])
def test_check_chain_refuses(declared: list[Layer], infos: list[dict[str, object]], match: str) -> None:
    with pytest.raises(BackingChainRefused, match=match) as exc:
        check_chain("spec.disks[d]", declared, _reader(declared, infos))
    assert str(exc.value).startswith("spec.disks[d]: ")


def test_the_domain_xml_pins_the_chain() -> None:
    plain = domxml.DiskSpec(name="a", path="/r/ns/a.img", format="raw", bus="virtio")
    chained = domxml.DiskSpec(name="b", path="/r/ns/b.qcow2", format="qcow2", bus="virtio",
                              backing=(domxml.BackingSpec("/r/ns/base.qcow2", "qcow2"),))
    from failovervm.domxml.devices.disk import build_disks

    a, b = build_disks([plain, chained])
    assert [c.tag for c in a.find("backingStore")] == [] and a.find("backingStore").attrib == {}
    store = b.find("backingStore")
    assert store.get("type") == "file" and store.find("source").get("file") == "/r/ns/base.qcow2"
    assert store.find("format").get("type") == "qcow2"
    end = store.find("backingStore")
    assert end is not None and len(end) == 0 and end.attrib == {}
    with pytest.raises(ValueError, match="raw image has no backing file"):
        domxml.DiskSpec(name="c", path="/r/ns/c.img", format="raw", bus="virtio",
                        backing=(domxml.BackingSpec("/r/ns/base.qcow2", "qcow2"),))
