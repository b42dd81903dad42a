"""Unit tests for the sandbox guest image: cpio writer, /init script, build cache (no network)."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import random
import re
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from failovervm_sandbox import SandboxError, guestimage, images
from failovervm_sandbox.guestimage import CpioEntry

# ----------------------------------------------------------------------------- a tiny newc parser


@dataclass
class Member:
    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    data: bytes
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    check: int


def parse_newc(archive: bytes) -> list[Member]:
    """Parse a newc archive strictly; the last member returned is the trailer."""
    out: list[Member] = []
    pos = 0
    while True:
        assert pos % 4 == 0, "every header starts 4-byte aligned"
        header = archive[pos : pos + 110]
        assert header[:6] == b"070701", f"bad magic at {pos}: {header[:6]!r}"
        f = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        assert all(re.fullmatch(rb"[0-9A-F]{8}", header[6 + 8 * i : 14 + 8 * i]) for i in range(13))
        namesize, filesize = f[11], f[6]
        raw_name = archive[pos + 110 : pos + 110 + namesize]
        assert raw_name.endswith(b"\0") and b"\0" not in raw_name[:-1]
        name = raw_name[:-1].decode()
        data_start = pos + 110 + namesize
        data_start += -data_start % 4
        assert archive[pos + 110 + namesize : data_start] == b"\0" * (data_start - pos - 110 - namesize)
        data = archive[data_start : data_start + filesize]
        assert len(data) == filesize
        pos = data_start + filesize
        pad = -pos % 4
        assert archive[pos : pos + pad] == b"\0" * pad
        pos += pad
        out.append(Member(name, f[0], f[1], f[2], f[3], f[4], f[5], data, f[7], f[8], f[9], f[10], f[12]))
        if name == "TRAILER!!!":
            assert pos == len(archive), "nothing after the trailer"
            return out


FAKE_BUSYBOX = b"\x7fELF fake busybox"
FAKE_MODULES = {name: f"module {name}".encode() * (i + 1) for i, name in enumerate(guestimage.GUEST_MODULES)}


def guest_members() -> dict[str, Member]:
    archive = gzip.decompress(guestimage.build_initramfs(FAKE_BUSYBOX, FAKE_MODULES))
    return {m.name: m for m in parse_newc(archive)}


# ----------------------------------------------------------------------------- cpio writer


def test_newc_headers_and_trailer() -> None:
    members = parse_newc(guestimage.write_cpio([CpioEntry.file("/a", b"abcde"), CpioEntry.directory("d")]))
    assert [m.name for m in members] == ["a", "d", "TRAILER!!!"]
    a, d, trailer = members
    assert a.mode == stat.S_IFREG | 0o644 and a.data == b"abcde" and a.nlink == 1
    assert d.mode == stat.S_IFDIR | 0o755 and d.data == b"" and d.nlink == 2
    for m in (a, d):
        assert (m.uid, m.gid, m.mtime, m.check, m.devmajor, m.devminor) == (0, 0, 0, 0, 0, 0)
        assert m.ino > 0
    assert len({a.ino, d.ino}) == 2
    assert (trailer.ino, trailer.mode, trailer.nlink, trailer.data) == (0, 0, 1, b"")


def test_initramfs_layout() -> None:
    members = guest_members()
    names = list(members)
    assert names[-1] == "TRAILER!!!"
    assert names[:-1] == sorted(names[:-1]), "sorted, so parents precede children"
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib/modules", "sbin", "usr/bin", "usr/sbin", "run"):
        assert members[d].mode == stat.S_IFDIR | 0o755, d
    console = members["dev/console"]
    assert console.mode == stat.S_IFCHR | 0o600
    assert (console.rdevmajor, console.rdevminor) == (5, 1) and console.data == b""
    assert members["bin/busybox"].mode == stat.S_IFREG | 0o755
    assert members["bin/busybox"].data == FAKE_BUSYBOX
    assert members["init"].mode == stat.S_IFREG | 0o755
    assert members["init"].data == guestimage.INIT_SCRIPT.encode()
    for name, data in FAKE_MODULES.items():
        assert members[f"lib/modules/{name}.ko"].data == data
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())
    inos = [m.ino for m in members.values() if m.name != "TRAILER!!!"]
    assert len(set(inos)) == len(inos)


def test_initramfs_is_deterministic() -> None:
    one = guestimage.build_initramfs(FAKE_BUSYBOX, FAKE_MODULES)
    two = guestimage.build_initramfs(FAKE_BUSYBOX, dict(reversed(list(FAKE_MODULES.items()))))
    assert one == two
    assert one[:2] == b"\x1f\x8b" and one[4:8] == b"\0\0\0\0", "gzip without an mtime"
    entries = guestimage.initramfs_entries(FAKE_BUSYBOX, FAKE_MODULES)
    shuffled = list(entries)
    random.Random(7).shuffle(shuffled)
    assert guestimage.write_cpio(shuffled) == guestimage.write_cpio(entries)
    assert guestimage.build_initramfs(FAKE_BUSYBOX, FAKE_MODULES, "#!/bin/busybox sh\n") != one


@pytest.mark.parametrize("name", ["", "/", "a//b", "../x", "a/./b", "TRAILER!!!"])
def test_cpio_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        guestimage.write_cpio([CpioEntry.file(name, b"")])


def test_cpio_rejects_duplicates_and_data_on_devices() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        guestimage.write_cpio([CpioEntry.directory("bin"), CpioEntry.directory("/bin")])
    with pytest.raises(ValueError):
        guestimage.write_cpio([CpioEntry("dev/x", stat.S_IFCHR | 0o600, b"data", 1, 3)])


# ----------------------------------------------------------------------------- /init


def test_init_script_syntax(tmp_path: Path) -> None:
    script = tmp_path / "init"
    script.write_text(guestimage.INIT_SCRIPT)
    busybox = shutil.which("busybox")
    argv = [busybox, "sh", "-n", str(script)] if busybox else ["/bin/sh", "-n", str(script)]
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_init_script_output_is_prefixed() -> None:
    script = guestimage.INIT_SCRIPT
    assert script.startswith("#!/bin/busybox sh\n")
    assert "--install -s" in script and "set -e" not in script
    echoes = [line.strip() for line in script.splitlines() if re.search(r"\becho\b", line)]
    assert len(echoes) >= 10
    for line in echoes:
        assert re.search(r'(^|\|\| |then |&& )echo "fvm-guest: ', line), line
    assert "printf" not in script, "every console line goes through an echo checked above"
    for needed in (
        "fvm-guest: boot kernel=",
        "fvm-guest: netdev name=$n driver=$driver mac=$mac master=$master lowers=${lowers:--} role=$role",
        "fvm-guest: failover master=$mdev standby=$standby",
        "fvm-guest: failover none",
        "fvm-guest: ip $net_dev $cfg_ip",
        "fvm-guest: tick n=$n uptime=$up",
        "peer=ok",
        "peer=fail",
        "fvm-guest: insmod $m failed",
        "fvm.ip=",
        "fvm.peer=",
        "fvm.tick=",
        "fvm.dirty=",
        "fvm-guest: dirtying mib=$cfg_dirty",
        "/dev/ttyS0",
        "ping -c1 -W1",
    ):
        assert needed in script, needed


def test_init_loads_modules_in_order() -> None:
    assert guestimage.GUEST_MODULES == (
        "virtio_ring",
        "virtio",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "failover",
        "net_failover",
        "virtio_net",
    )
    loops = re.findall(r"^for m in (.*); do$", guestimage.INIT_SCRIPT, re.MULTILINE)
    assert loops == [" ".join(guestimage.GUEST_MODULES)]
    assert 'insmod "/lib/modules/$m.ko"' in guestimage.INIT_SCRIPT


def test_constants() -> None:
    assert images.GUEST_KERNEL == guestimage.GUEST_KERNEL == "fvm-guest-vmlinuz"
    assert images.GUEST_INITRD == guestimage.GUEST_INITRD == "fvm-guest-initrd.img"
    assert "console=ttyS0" in guestimage.GUEST_CMDLINE.split()
    assert "panic=-1" in guestimage.GUEST_CMDLINE.split()


# ----------------------------------------------------------------------------- build cache

KREL = "6.1.0-99-cloud-amd64"
KPKG = f"linux-image-{KREL}"
KVER = "6.1.999-1"
BBVER = "1:1.35.0-4+deb12u1"


class FakeApt:
    """Stands in for apt-cache, apt-get download and dpkg-deb; records every call."""

    def __init__(self, *, online: bool = True, kver: str = KVER) -> None:
        self.calls: list[list[str]] = []
        self.online = online
        self.kver = kver

    def __call__(self, argv: Sequence[str], cwd: Path | None) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)

        def done(out: str = "", rc: int = 0, err: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.CompletedProcess(argv, rc, out, err)

        if argv[:2] == ["apt-cache", "depends"]:
            return done(f"{argv[2]}\n  Depends: {KPKG}\n |Depends: <linux-initramfs-tool>\n")
        if argv[:2] == ["apt-cache", "policy"]:
            version = self.kver if argv[2] == KPKG else BBVER
            return done(f"{argv[2]}:\n  Installed: (none)\n  Candidate: {version}\n  Version table:\n")
        if argv[:2] == ["apt-get", "download"]:
            if not self.online:
                return done(rc=100, err="E: Failed to fetch http://deb.debian.org/... Temporary failure resolving")
            assert cwd is not None
            pkg, version = argv[-1].split("=", 1)
            deb = cwd / f"{pkg}_{version.replace(':', '%3a')}_amd64.deb"
            deb.write_text(json.dumps({"Package": pkg, "Version": version}))
            return done()
        if argv[:2] == ["dpkg-deb", "-f"]:
            fields = json.loads(Path(argv[2]).read_text())
            return done("".join(f"{k}: {fields[k]}\n" for k in argv[3:]))
        if argv[:2] == ["dpkg-deb", "-x"]:
            fields = json.loads(Path(argv[2]).read_text())
            root = Path(argv[3])
            if fields["Package"] == KPKG:
                (root / "boot").mkdir(parents=True, exist_ok=True)
                (root / "boot" / f"vmlinuz-{KREL}").write_bytes(b"kernel " + fields["Version"].encode())
                mods = root / "lib" / "modules" / KREL / "kernel" / "drivers"
                mods.mkdir(parents=True, exist_ok=True)
                for name in guestimage.GUEST_MODULES:
                    if name == "virtio_net":  # one compressed module
                        (mods / f"{name}.ko.xz").write_bytes(lzma.compress(b"ko " + name.encode()))
                    else:
                        (mods / f"{name}.ko").write_bytes(b"ko " + name.encode())
                (mods / "unrelated.ko").write_bytes(b"nope")
            else:
                (root / "bin").mkdir(parents=True, exist_ok=True)
                (root / "bin" / "busybox").write_bytes(b"busybox " + fields["Version"].encode())
            return done()
        if argv[0] == "gcc":
            Path(argv[argv.index("-o") + 1]).write_bytes(b"\x7fELF fake dirtier")
            return done()
        raise AssertionError(f"unexpected command {argv}")

    def tools(self) -> list[str]:
        return [" ".join(c[:2]) for c in self.calls]


def never_run(argv: Sequence[str], cwd: Path | None) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"no tool may run on a cache hit: {argv}")


@pytest.fixture
def have_dpkg_deb(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil,
        "which",
        lambda name, *a, **kw: "/usr/bin/dpkg-deb" if name == "dpkg-deb" else real_which(name, *a, **kw),
    )


def fake_cache(cache: Path, recipe: str | None = None) -> tuple[bytes, bytes]:
    """A cache holding a manifest and its build, as a previous ensure_guest left it."""
    recipe = recipe or guestimage.recipe_hash()
    pins = guestimage.Pins(KPKG, KVER, BBVER)
    key = pins.key(recipe)
    kernel, initrd = b"cached kernel", b"cached initrd"
    build = cache / "builds" / key
    build.mkdir(parents=True)
    (build / "vmlinuz").write_bytes(kernel)
    (build / "initrd.img").write_bytes(initrd)
    manifest = {
        "format": 1,
        "kernel_package": KPKG,
        "kernel_version": KVER,
        "busybox_version": BBVER,
        "recipe": recipe,
        "key": key,
        "kernel": f"builds/{key}/vmlinuz",
        "kernel_sha256": hashlib.sha256(kernel).hexdigest(),
        "initrd": f"builds/{key}/initrd.img",
        "initrd_sha256": hashlib.sha256(initrd).hexdigest(),
    }
    (cache / "manifest.json").write_text(json.dumps(manifest))
    return kernel, initrd


def test_cache_hit_runs_nothing_and_copies(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "images"
    kernel, initrd = fake_cache(cache)
    got = guestimage.ensure_guest(out, cache, runner=never_run)
    assert got == {"kernel": out / "fvm-guest-vmlinuz", "initrd": out / "fvm-guest-initrd.img"}
    assert got["kernel"].read_bytes() == kernel and got["initrd"].read_bytes() == initrd
    assert stat.S_IMODE(got["kernel"].stat().st_mode) == 0o644
    inode = got["kernel"].stat().st_ino
    guestimage.ensure_guest(out, cache, runner=never_run)
    assert got["kernel"].stat().st_ino == inode, "unchanged content is not rewritten"
    got["initrd"].write_bytes(b"stale")
    guestimage.ensure_guest(out, cache, runner=never_run)
    assert got["initrd"].read_bytes() == initrd
    assert sorted(p.name for p in out.iterdir()) == ["fvm-guest-initrd.img", "fvm-guest-vmlinuz"]


def test_ensure_images_with_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, out = tmp_path / "cache", tmp_path / "images"
    fake_cache(cache)
    monkeypatch.setattr(guestimage, "run_tool", never_run)
    got = images.ensure_images(out, cache_dir=cache)
    assert set(got) == {"halt", "guest_kernel", "guest_initrd"}
    assert got["guest_kernel"] == out / "fvm-guest-vmlinuz" and got["guest_kernel"].read_bytes() == b"cached kernel"
    assert set(images.ensure_images(tmp_path / "other", guest=False)) == {"halt"}


def test_corrupt_cache_without_apt_is_a_clear_error(tmp_path: Path, have_dpkg_deb: None) -> None:
    cache = tmp_path / "cache"
    fake_cache(cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / manifest["initrd"]).write_bytes(b"truncated")
    with pytest.raises(SandboxError, match=r"cannot build the sandbox guest image and none is cached.*apt-get update"):
        guestimage.ensure_guest(tmp_path / "images", cache, runner=FakeApt(online=False))


def test_empty_cache_offline_is_a_clear_error(tmp_path: Path, have_dpkg_deb: None) -> None:
    with pytest.raises(SandboxError, match="Temporary failure resolving"):
        guestimage.ensure_guest(tmp_path / "images", tmp_path / "cache", runner=FakeApt(online=False))


def test_offline_with_outdated_build_uses_it(tmp_path: Path, have_dpkg_deb: None) -> None:
    cache, out = tmp_path / "cache", tmp_path / "images"
    kernel, _ = fake_cache(cache, recipe="an older init script")
    apt = FakeApt(online=False)
    got = guestimage.ensure_guest(out, cache, runner=apt)
    assert got["kernel"].read_bytes() == kernel
    assert "apt-get download" in apt.tools()


def test_build_pins_versions_and_rebuilds_from_cached_debs(
    tmp_path: Path, have_dpkg_deb: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "images"
    apt = FakeApt()
    got = guestimage.ensure_guest(out, cache, runner=apt)
    assert apt.tools()[:3] == ["apt-cache depends", "apt-cache policy", "apt-cache policy"]
    assert apt.tools().count("apt-get download") == 2 and apt.tools().count("dpkg-deb -x") == 2
    downloads = [c for c in apt.calls if c[:2] == ["apt-get", "download"]]
    assert [c[-1] for c in downloads] == [f"{KPKG}={KVER}", f"busybox-static={BBVER}"]
    assert got["kernel"].read_bytes() == b"kernel " + KVER.encode()
    members = {m.name: m for m in parse_newc(gzip.decompress(got["initrd"].read_bytes()))}
    assert members["bin/busybox"].data == b"busybox " + BBVER.encode()
    assert members["bin/fvm-dirtier"].data == b"\x7fELF fake dirtier"
    assert members["bin/fvm-dirtier"].mode == stat.S_IFREG | 0o755
    assert members["lib/modules/virtio_net.ko"].data == b"ko virtio_net", "the .ko.xz was decompressed"
    assert {n for n in members if n.startswith("lib/modules/")} == {
        f"lib/modules/{m}.ko" for m in guestimage.GUEST_MODULES
    }
    manifest = guestimage.load_manifest(cache)
    assert manifest is not None
    assert (manifest["kernel_package"], manifest["kernel_version"], manifest["busybox_version"]) == (KPKG, KVER, BBVER)
    assert manifest["kernel_release"] == KREL and manifest["recipe"] == guestimage.recipe_hash()
    assert sorted(p.name for p in (cache / "debs").iterdir()) == [
        "busybox-static_1%3a1.35.0-4+deb12u1_amd64.deb",
        f"{KPKG}_{KVER}_amd64.deb",
    ]
    assert not list(cache.glob("unpack-*")), "the unpacked packages are removed"
    first_initrd = got["initrd"].read_bytes()

    # Same recipe: a cache hit, no tool runs.
    guestimage.ensure_guest(out, cache, runner=never_run)

    # A changed init script rebuilds from the pinned, cached .debs, even though apt now has a newer kernel.
    monkeypatch.setattr(guestimage, "INIT_SCRIPT", guestimage.INIT_SCRIPT + "# changed\n")
    apt2 = FakeApt(kver="6.1.1000-1")
    got = guestimage.ensure_guest(out, cache, runner=apt2)
    assert set(apt2.tools()) == {"dpkg-deb -f", "dpkg-deb -x", "gcc -static"}
    assert got["kernel"].read_bytes() == b"kernel " + KVER.encode()
    assert got["initrd"].read_bytes() != first_initrd
    assert len(list((cache / "builds").iterdir())) == 1, "the outdated build is pruned"

    # refresh=True resolves the newest versions again.
    apt3 = FakeApt(kver="6.1.1000-1")
    got = guestimage.ensure_guest(out, cache, refresh=True, runner=apt3)
    assert "apt-cache depends" in apt3.tools()
    assert got["kernel"].read_bytes() == b"kernel 6.1.1000-1"
    assert not (cache / "debs" / f"{KPKG}_{KVER}_amd64.deb").exists()


def test_the_dirtier_compiles_to_a_static_binary_and_dirties(tmp_path: Path) -> None:
    """The real gcc (a sandbox prerequisite) builds the guest's dirtier without libc; run on the
    host it rewrites its memory and reports its rate in the guest's console format."""
    binary = tmp_path / "fvm-dirtier"
    binary.write_bytes(guestimage.compile_dirtier(guestimage.run_tool, tmp_path))
    data = binary.read_bytes()
    assert data[:4] == b"\x7fELF" and b"libc.so" not in data and b"ld-linux" not in data
    binary.chmod(0o755)
    res = subprocess.run(["timeout", "-s", "KILL", "5.5", str(binary), "1", "1"], capture_output=True, text=True)
    assert res.returncode == -9 or res.returncode == 137, res
    assert re.fullmatch(r"fvm-guest: dirtier pass=\d+ kib_per_s=[1-9]\d*\n", res.stdout), res.stdout


def test_resolve_pins_parses_apt_cache() -> None:
    pins = guestimage.resolve_pins(FakeApt())
    assert pins == guestimage.Pins(KPKG, KVER, BBVER)
    assert pins.kernel_release == KREL
    assert len(pins.key("r")) == 16 and pins.key("r") != pins.key("s")
