"""Confinement of user-supplied host paths (disk images, kernels, initrds) to allowed roots.

A FailoverVM names files on the node (``spec.disks[].path``, ``spec.kernel``, ``spec.initrd``) that
QEMU will open with the privileges of the node agent. The CRD already rejects relative paths and
``..`` segments; this is the node-side check that also follows symlinks, so that
``/var/lib/failovervm/images/x -> /etc/shadow`` cannot be used to read host files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import FailoverVMError

__all__ = ["PathNotAllowed", "confine_path", "is_within"]


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
