"""Paths built from names users chose (profiles, folders, files) never leave their root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class UnsafePath(ValueError):
    """A computed path would leave the folder it must stay in."""


def inside(root: Path, *parts: str | PurePosixPath) -> Path:
    """``root/parts`` resolved; refuses ``..``, absolute parts and NUL (names come from users)."""
    joined = Path(*[str(part) for part in parts]) if parts else Path()
    text = str(joined)
    if "\0" in text or joined.is_absolute() or ".." in joined.parts:
        raise UnsafePath(f"refusing the path {text!r}: it would leave {root}")
    target = (root / joined).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise UnsafePath(f"refusing the path {text!r}: it resolves outside {root}")
    return target
