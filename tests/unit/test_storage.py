"""Unit tests for failovervm.storage.confine_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from failovervm.storage import PathNotAllowed, confine_path, is_within


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = Path(os.path.realpath(tmp_path)) / "images"
    r.mkdir()
    (r / "disk.qcow2").write_text("")
    (r / "sub").mkdir()
    (r / "sub" / "data.raw").write_text("")
    return r


def test_allows_files_inside_root(root: Path) -> None:
    assert confine_path(str(root / "disk.qcow2"), [str(root)]) == str(root / "disk.qcow2")
    assert confine_path(str(root / "sub" / "data.raw"), [str(root)]) == str(root / "sub" / "data.raw")


def test_allows_not_yet_existing_file(root: Path) -> None:
    assert confine_path(str(root / "new.qcow2"), [str(root)]) == str(root / "new.qcow2")


def test_any_of_several_roots(root: Path) -> None:
    other = root.parent / "kernels"
    other.mkdir()
    assert confine_path(str(other / "vmlinuz"), ["/nonexistent-root", str(root), str(other)]) == str(other / "vmlinuz")


def test_normalizes_redundant_separators(root: Path) -> None:
    assert confine_path(f"{root}//sub/./data.raw", [str(root)]) == str(root / "sub" / "data.raw")


@pytest.mark.parametrize(
    "rel",
    ["../escape", "sub/../../escape", "sub/..", "..", "sub/../disk.qcow2"],
)
def test_rejects_dotdot_even_if_it_would_stay_inside(root: Path, rel: str) -> None:
    with pytest.raises(PathNotAllowed, match=r"'\.\.'"):
        confine_path(f"{root}/{rel}", [str(root)])


def test_dotdot_like_names_are_fine(root: Path) -> None:
    assert confine_path(f"{root}/..disk", [str(root)]) == str(root / "..disk")
    assert confine_path(f"{root}/disk..qcow2", [str(root)]) == str(root / "disk..qcow2")


@pytest.mark.parametrize("bad", ["disk.qcow2", "./disk.qcow2", "", "images/disk.qcow2"])
def test_rejects_relative(root: Path, bad: str) -> None:
    with pytest.raises(PathNotAllowed):
        confine_path(bad, [str(root)])


def test_rejects_nul(root: Path) -> None:
    with pytest.raises(PathNotAllowed, match="NUL"):
        confine_path(f"{root}/disk\x00.qcow2", [str(root)])


def test_rejects_etc_shadow(root: Path) -> None:
    with pytest.raises(PathNotAllowed) as excinfo:
        confine_path("/etc/shadow", [str(root)])
    msg = str(excinfo.value)
    assert "/etc/shadow" in msg
    assert str(root) in msg
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.path == "/etc/shadow"


def test_rejects_symlink_escape(root: Path) -> None:
    os.symlink("/etc/shadow", root / "evil.qcow2")
    with pytest.raises(PathNotAllowed) as excinfo:
        confine_path(str(root / "evil.qcow2"), [str(root)])
    assert "/etc/shadow" in str(excinfo.value)  # says where it resolves to


def test_rejects_symlinked_directory_escape(root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret").write_text("")
    os.symlink(outside, root / "linkdir")
    with pytest.raises(PathNotAllowed):
        confine_path(str(root / "linkdir" / "secret"), [str(root)])


def test_symlink_inside_root_is_followed(root: Path) -> None:
    os.symlink(root / "sub" / "data.raw", root / "alias.raw")
    assert confine_path(str(root / "alias.raw"), [str(root)]) == str(root / "sub" / "data.raw")


def test_symlinked_root_is_resolved(root: Path) -> None:
    link_root = root.parent / "images-link"
    os.symlink(root, link_root)
    assert confine_path(str(link_root / "disk.qcow2"), [str(link_root)]) == str(root / "disk.qcow2")


def test_sibling_with_common_prefix_is_outside(root: Path) -> None:
    sibling = root.parent / "images-evil"
    sibling.mkdir()
    with pytest.raises(PathNotAllowed):
        confine_path(str(sibling / "disk.qcow2"), [str(root)])


def test_root_itself_is_allowed(root: Path) -> None:
    assert confine_path(str(root), [str(root)]) == str(root)


def test_no_roots_allows_nothing(root: Path) -> None:
    with pytest.raises(PathNotAllowed, match="no allowed storage roots"):
        confine_path(str(root / "disk.qcow2"), [])
    with pytest.raises(PathNotAllowed, match="no allowed storage roots"):
        confine_path(str(root / "disk.qcow2"), ["relative/root", ""])


def test_is_within() -> None:
    assert is_within("/a/b", "/a")
    assert is_within("/a", "/a")
    assert not is_within("/ab", "/a")
    assert is_within("/anything", "/")
    assert not is_within("relative", "/a")
