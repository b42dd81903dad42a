"""Confinement of user-supplied host paths (disk images, kernels, initrds) to allowed roots.

A FailoverVM names files on the node (``spec.disks[].path``, ``spec.kernel``, ``spec.initrd``) that
QEMU will open with the privileges of the node agent. The CRD already rejects relative paths and
``..`` segments; this is the node-side check that also follows symlinks, so that
``/var/lib/failovervm/images/x -> /etc/shadow`` cannot be used to read host files.

Per namespace (issue #14): a namespace's VMs may only use ``<root>/<namespace>/`` of each root,
plus the administrator's grants (``StoragePolicy``); and a disk image's backing chain is what the
spec declares and nothing else (``check_chain``, run by the agent on the node before define).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FailoverVMError

__all__ = ["BackingChainRefused", "Layer", "PathNotAllowed", "StorageGrant", "StoragePolicy", "check_chain",
           "confine_path", "is_within"]


class PathNotAllowed(FailoverVMError, ValueError):
    """A path is malformed or resolves outside every allowed root."""

    def __init__(self, path: str, roots: Sequence[str], why: str) -> None:
        self.path = path
        self.roots = list(roots)
        self.why = why
        roots_text = ", ".join(self.roots) if self.roots else "(none configured)"
        super().__init__(f"path {path!r} is not allowed: {why}; allowed roots: {roots_text}")


def is_within(path: str, root: str) -> bool:
    """True when normalized absolute ``path`` equals ``root`` or lies below it (no symlink handling)."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # mixes absolute and relative paths
        return False


def confine_path(path: str, roots: Sequence[str]) -> str:
    """Return the symlink-resolved form of ``path`` if it lies inside one of ``roots``.

    Rules: ``path`` must be a non-empty absolute string without NUL bytes and without any ``..``
    component; after :func:`os.path.realpath` (all symlinks resolved, also for the roots) it must
    be one of the roots or below one. The path does not need to exist (a disk may be created
    later), but any existing symlink on the way is followed. Raises :class:`PathNotAllowed`.
    """
    if not isinstance(path, str) or not path:
        raise PathNotAllowed(str(path), roots, "must be a non-empty string")
    if "\x00" in path:
        raise PathNotAllowed(path, roots, "contains a NUL byte")
    if not path.startswith("/"):
        raise PathNotAllowed(path, roots, "must be absolute")
    if ".." in path.split("/"):
        raise PathNotAllowed(path, roots, "must not contain '..' components")
    resolved_roots: list[str] = []
    for root in roots:
        if not root or "\x00" in root or not root.startswith("/"):
            continue  # a misconfigured root allows nothing
        resolved_roots.append(os.path.realpath(root))
    if not resolved_roots:
        raise PathNotAllowed(path, roots, "no allowed storage roots are configured")
    resolved = os.path.realpath(path)
    for root in resolved_roots:
        if is_within(resolved, root):
            return resolved
    detail = f"resolves to {resolved!r}" if resolved != os.path.normpath(path) else "it is"
    raise PathNotAllowed(path, roots, f"{detail} outside the allowed roots")


# -- per-namespace storage ----------------------------------------------------------------------
ALL_NAMESPACES = "*"


@dataclass(frozen=True)
class StorageGrant:
    """An administrator's grant: the VMs of ``namespace`` (or of every namespace, ``*``) may also use
    the files under ``path`` (a directory inside one of the storage roots); ``read_only`` grants are
    usable as kernel, initrd, read-only disk and backing file only, never as a writable disk."""

    namespace: str
    path: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> StorageGrant:
        """``NAMESPACE=PATH`` or ``NAMESPACE=PATH:ro`` (the agent's and controller's --storage-grant)."""
        namespace, sep, rest = text.partition("=")
        read_only = rest.endswith(":ro")
        path = rest[: -len(":ro")] if read_only else rest
        if not sep or not namespace or not path.startswith("/") or "\x00" in path or ".." in path.split("/"):
            raise ValueError(f"invalid storage grant {text!r}: expected NAMESPACE=/ABSOLUTE/PATH[:ro]")
        if namespace != ALL_NAMESPACES and not _is_namespace(namespace):
            raise ValueError(f"invalid storage grant {text!r}: {namespace!r} is not a namespace name or '*'")
        return cls(namespace=namespace, path=os.path.normpath(path), read_only=read_only)


def _is_namespace(name: str) -> bool:
    return bool(name) and len(name) <= 63 and name not in (".", "..") and all(
        c.isdigit() or ("a" <= c <= "z") or c == "-" for c in name) and name[0] != "-" and name[-1] != "-"


@dataclass(frozen=True)
class StoragePolicy:
    """Which host paths a namespace's VMs may name: ``<root>/<namespace>/`` under every storage root,
    plus the administrator's grants for that namespace (or for all, ``*``). Grants must lie inside a
    storage root (the agent only mounts the roots)."""

    roots: tuple[str, ...]
    grants: tuple[StorageGrant, ...] = ()

    def __post_init__(self) -> None:
        for grant in self.grants:
            if not any(is_within(grant.path, os.path.normpath(root)) for root in self.roots):
                raise ValueError(f"storage grant {grant.path!r} for {grant.namespace!r} is not inside a storage root "
                                 f"({', '.join(self.roots) or 'none configured'})")

    def dirs(self, namespace: str, *, write: bool) -> list[str]:
        """The directories the VMs of ``namespace`` may use (for a writable disk when ``write``)."""
        if not _is_namespace(namespace):
            return []
        out = [os.path.join(root, namespace) for root in self.roots]
        out += [g.path for g in self.grants
                if g.namespace in (namespace, ALL_NAMESPACES) and not (write and g.read_only)]
        return out

    def confine(self, path: str, namespace: str, *, write: bool) -> str:
        """``path`` symlink-resolved if the VMs of ``namespace`` may use it (see :func:`confine_path`),
        else :class:`PathNotAllowed` naming the rule."""
        try:
            return confine_path(path, self.dirs(namespace, write=write))
        except PathNotAllowed as exc:
            scope = (f"namespace {namespace!r} may only use <storage root>/{namespace}/ and the administrator's "
                     f"{'writable ' if write else ''}storage grants")
            raise PathNotAllowed(path, exc.roots, f"{exc.why} ({scope})") from None


# -- backing chains -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One image of a disk's backing chain as the spec declares it (symlink-resolved path)."""

    path: str
    format: str


class BackingChainRefused(FailoverVMError, ValueError):
    """A disk image's header does not match the chain the spec declares."""


def check_chain(field: str, declared: Sequence[Layer], info: Callable[[Layer], Mapping[str, Any]]) -> None:
    """Compare the declared chain (``declared[0]`` is the disk itself, then its backing files in
    order) with what the images' headers say, ``info(layer)`` being ``qemu-img info
    --output=json`` of that one image opened with its declared format (the shape of one entry of
    ``--backing-chain``). Layers are read top down and a layer is only read once the one above
    names it. Raises :class:`BackingChainRefused` naming ``field``.

    Rules: each image's format is the declared one; an image names a backing file only if the
    spec declares the next layer, and then exactly that file (after symlinks) in the declared
    format; the last declared layer names none."""
    for i, layer in enumerate(declared):
        got = info(layer)
        what = f"{field}: image {layer.path!r}" if i == 0 else f"{field}: backing file {layer.path!r}"
        fmt = got.get("format")
        if fmt != layer.format:
            raise BackingChainRefused(f"{what} is {fmt!r}, not the declared format {layer.format!r}")
        named = got.get("full-backing-filename") or got.get("backing-filename")
        nxt = declared[i + 1] if i + 1 < len(declared) else None
        if named is None:
            if nxt is not None:
                raise BackingChainRefused(f"{what} has no backing file, but backingChain declares {nxt.path!r}")
            continue
        if nxt is None:
            raise BackingChainRefused(
                f"{what} names backing file {named!r}, which backingChain does not declare (refused: a backing "
                "file is only opened when the spec declares it)")
        if os.path.realpath(str(named)) != nxt.path:
            raise BackingChainRefused(f"{what} names backing file {named!r}, but backingChain declares {nxt.path!r}")
        named_fmt = got.get("backing-filename-format")
        if named_fmt and named_fmt != nxt.format:
            raise BackingChainRefused(
                f"{what} names its backing file in format {named_fmt!r}, but backingChain declares {nxt.format!r}")
