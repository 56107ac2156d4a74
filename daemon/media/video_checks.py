"""Is a video file whole? Its container's own records of its length, read from the headers.

FFmpeg decodes a clip cut short without complaint (it just stops early), yet a file that is
still being copied must not pass for a short clip. Each container below records its own length,
so a few header reads tell: the sizes of MP4/MOV's top-level boxes, the size of Matroska/WebM's
Segment, and the chain of GIF's blocks.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import BinaryIO

_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_SEGMENT_ID = b"\x18\x53\x80\x67"


def missing_tail(path: Path) -> str | None:
    """Why the file's own structure says that bytes are missing at its end, or None."""
    with path.open("rb") as handle:
        head = handle.read(16)
        size = os.fstat(handle.fileno()).st_size
        if head[4:8] in _MP4_BOXES:
            return _short_box(handle, size)
        if head.startswith(_EBML_MAGIC):
            return _short_segment(handle, size)
        if head.startswith((b"GIF87a", b"GIF89a")):
            # Mapped, not read: a long GIF can be large and only its block headers matter.
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _unended_gif(data)
    return None  # other containers: FFmpeg's own checks only


def _short_box(handle: BinaryIO, size: int) -> str | None:
    """ISO media files are a chain of boxes, each starting with its own length."""
    position = 0
    while size - position >= 8:  # a few stray bytes at the end are harmless
        handle.seek(position)
        header = handle.read(16)
        length = int.from_bytes(header[:4], "big")
        if length == 1 and len(header) == 16:  # a 64-bit length follows the type
            length = int.from_bytes(header[8:16], "big")
        elif length == 0:  # the last box runs to the end of the file
            return None
        if length < 8:
            return f"a damaged box at byte {position}"
        if position + length > size:
            kind = header[4:8].decode("latin-1")
            return f"its '{kind}' box needs {position + length - size:,} more bytes"
        position += length
    return None


def _short_segment(handle: BinaryIO, size: int) -> str | None:
    """Matroska: the EBML header, then one Segment whose length is stated up front."""
    handle.seek(4)
    header_length = _ebml_number(handle)
    if header_length is None:
        return None
    handle.seek(handle.tell() + header_length)
    if handle.read(4) != _SEGMENT_ID:
        return None
    length = _ebml_number(handle)
    if length is None:  # "unknown size": a live recording, nothing to check
        return None
    if handle.tell() + length > size:
        return f"its segment needs {handle.tell() + length - size:,} more bytes"
    return None


def _ebml_number(handle: BinaryIO) -> int | None:
    """A variable-length EBML size; None when unreadable or "unknown" (all bits set)."""
    first = handle.read(1)
    if not first or first[0] == 0:
        return None
    width = 9 - first[0].bit_length()  # leading zero bits say how many bytes follow
    rest = handle.read(width - 1)
    if len(rest) < width - 1:
        return None
    value = int.from_bytes(bytes([first[0] & (0xFF >> width)]) + rest, "big")
    return None if value == (1 << (7 * width)) - 1 else value


def _unended_gif(data: bytes | mmap.mmap) -> str | None:
    """Walk GIF's blocks; the data must not run out inside one.

    A file that ends cleanly between blocks passes even without the end marker (0x3B):
    old encoders left it out and every reader copes.
    """
    position = 13  # signature and logical screen descriptor
    if len(data) < position:
        return "its header is incomplete"
    position += _colour_table(data[10])
    while position < len(data):
        kind = data[position]
        if kind == 0x3B:
            return None
        if kind == 0x21:  # extension: label, then sub-blocks
            position = _after_sub_blocks(data, position + 2)
        elif kind == 0x2C and position + 10 <= len(data):
            # image: descriptor, local colours, LZW code size, then sub-blocks
            position += 10 + _colour_table(data[position + 9])
            position = _after_sub_blocks(data, position + 1)
        elif kind == 0x2C:
            break
        else:
            return None  # not GIF data any more: readers stop here, so do we
    return None if position == len(data) else "it stops inside a frame"


def _colour_table(flags: int) -> int:
    return 3 * (2 << (flags & 7)) if flags & 0x80 else 0


def _after_sub_blocks(data: bytes | mmap.mmap, position: int) -> int:
    """The position after a chain of sub-blocks (each led by its length, 0 ends it)."""
    while position < len(data) and data[position]:
        position += data[position] + 1
    return position + 1
