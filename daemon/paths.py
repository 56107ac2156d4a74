"""Paths built from names users chose (profiles, folders, files) never leave their root, are
shown safely, and are named portably in the outbox: a name is whatever bytes someone gave a
file, newlines and terminal escape sequences included."""

from __future__ import annotations

import os
import unicodedata
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


# What Windows (and so a share or a sync to it) cannot hold in a name; control characters too.
_WINDOWS_FORBIDDEN = frozenset('<>:"/\\|?*')
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10))}
)


def portable_name(name: str) -> str:
    """`name` (a file's stem or a folder's name) as the outbox writes it, so that a result can
    be copied or synced to any platform: control characters, characters Windows forbids
    (``<>:"/\\|?*``) and bytes that are not UTF-8 become ``_``; trailing dots and spaces go
    (Windows drops them); a Windows device name (``CON``, ``NUL``, ``COM1``…, whatever its
    extension) gets a ``_`` in front. Ordinary names come out exactly as they went in."""
    if name.isprintable() and not _WINDOWS_FORBIDDEN.intersection(name):
        mapped = name  # the common case: nothing to build
    else:
        mapped = "".join("_" if _unportable(char) else char for char in name)
    mapped = mapped.rstrip(" .")
    if mapped.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        mapped = f"_{mapped}"
    return mapped or "_"


def _unportable(char: str) -> bool:
    return char in _WINDOWS_FORBIDDEN or unicodedata.category(char) in ("Cc", "Cs")


def output_folder(outbox: Path, profile: str, sub_dir: PurePosixPath) -> Path:
    """``outbox/<profile>/<sub-path>`` for a job, each name made portable, inside the outbox."""
    return inside(outbox, *(portable_name(part) for part in (profile, *sub_dir.parts)))


def shown(path: str | os.PathLike[str]) -> str:
    """A path or file name as the log, ``status`` and the reports show it: relative to the
    working folder when it lies inside it (``inbox/img2img``, as the README writes paths),
    with every unprintable character escaped (see :func:`escaped`)."""
    text = os.fspath(path)
    if os.path.isabs(text):
        text = _below_working_folder(text)
    return escaped(text)


def escaped(text: str) -> str:
    """`text` with control and other unprintable characters written as Python escapes
    (``\\n``, ``\\r``, ``\\x1b``, ``\\u202e``), so that a file name can neither forge a log
    line nor drive a terminal; a byte that is not UTF-8 (``os.fsdecode``'s surrogate) shows as
    ``\\xNN``. A backslash stays as it is, so escaping twice changes nothing: text built from
    shown names can be made safe again where it is written."""
    if text.isprintable():
        return text  # every ordinary name: nothing to build
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def escaped_lines(text: str) -> str:
    """:func:`escaped`, line by line: a message or traceback keeps its line breaks."""
    return "\n".join(escaped(line) for line in text.split("\n"))


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _below_working_folder(text: str) -> str:
    """`text` relative to the working folder when it lies inside it (shorter, and how the
    README and a user in that folder write it); else as it is."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working folder was deleted
        return text
    if text == cwd:
        return "."
    prefix = cwd.rstrip(os.sep) + os.sep
    return text[len(prefix) :] if text.startswith(prefix) else text
