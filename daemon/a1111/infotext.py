"""A1111's "infotext": the `parameters` text embedded in generated images.

Writing follows A1111's ``create_infotext`` and reading its ``parse_generation_parameters``
(modules/infotext_utils.py, v1.10), so files made here paste back into A1111 and files
from A1111 read back here. Pure functions: no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

KEY_ORDER: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Distilled CFG Scale",  # Forge, right after CFG scale; Flux-dev's embedded guidance
    "Shift",  # a flow model's static shift, when a profile sets one (Forge writes none)
    "Image CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "Mask blur",
    "Mask mode",
    "Inpaint area",
    "Masked area padding",
    "Masked content",
    "Lora hashes",
    "TI hashes",
)
VERSION_KEY = "Version"
NEGATIVE_PREFIX = "Negative prompt:"

# A1111's own pattern for one `key: value` pair of the parameter line.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_KEY = re.compile(r"\w[\w \-/]+")

INPAINT_DEFAULTS: Mapping[str, str] = {
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": "32",
}

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
_UNICODE = b"UNICODE\0"
_ASCII = b"ASCII\0\0\0"
_JIS = b"JIS\0\0\0\0\0"


# --- writing ---------------------------------------------------------------------------


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        # 7.0 -> "7", 0.75 -> "0.75": str() is Python's shortest round-trip form.
        number = float(value)
        if math.isfinite(number) and number == int(number):
            return str(int(number))
        return str(value)
    if isinstance(value, Mapping):
        # "Lora hashes" and "TI hashes" are "name: hash, name: hash".
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def quote(text: str) -> str:
    """A1111's quote(), also quoting '"' so a value that starts and ends with one survives."""
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _is_omitted(key: str, value: object) -> bool:
    if value is None or value == "":
        return True
    if key == "Clip skip":
        # A1111 writes Clip skip only when it changes something (> 1).
        try:
            return int(str(value)) <= 1
        except ValueError:
            return False
    return False


def _ordered_keys(params: Mapping[str, object]) -> Iterator[str]:
    yield from (k for k in KEY_ORDER if k in params)
    known = {*KEY_ORDER, VERSION_KEY}
    yield from (k for k in params if k not in known)
    if VERSION_KEY in params:
        yield VERSION_KEY


def format_parameters(params: Mapping[str, object]) -> str:
    """The single parameter line: ``Key: value, Key: value`` in A1111's order."""
    parts = []
    for key in _ordered_keys(params):
        value = params[key]
        if _is_omitted(key, value):
            continue
        if _RE_KEY.fullmatch(key) is None:
            # Such a key could not be read back and would garble the keys after it.
            raise ValueError(f"infotext key {key!r} is not a word followed by [\\w -/] chars")
        parts.append(f"{key}: {quote(_format_value(value))}")
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The full `parameters` text exactly as A1111 lays it out."""
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_parameters(params)}".strip()


# --- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Infotext:
    prompt: str
    negative_prompt: str
    params: dict[str, str]


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def parse_parameters(line: str) -> dict[str, str]:
    """The `key: value` pairs of a parameter line; quoted values JSON-decoded."""
    # A1111 skips empty values (its v[0] raises and the pair is dropped).
    return {k: _unquote(v) for k, v in RE_PARAM.findall(line) if v}


def parse_infotext(text: str) -> Infotext:
    """Read a `parameters` text the way A1111's parse_generation_parameters does."""
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        # Not a parameter line: the whole text is prompt (and negative prompt).
        lines.append(last)
        last = ""

    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PREFIX):
            target = negative
            line = line[len(NEGATIVE_PREFIX) :].strip()
        target.append(line)
    return Infotext("\n".join(prompt), "\n".join(negative), parse_parameters(last))


def with_inpaint_defaults(params: Mapping[str, str]) -> dict[str, str]:
    """``params`` with A1111's values for the inpaint keys an infotext leaves out."""
    return {**INPAINT_DEFAULTS, **params}


# --- storage in image files ------------------------------------------------------------


def pnginfo_chunk(text: str) -> PngImagePlugin.PngInfo:
    """PNG text chunk `parameters`; Pillow switches to iTXt when text is not latin-1."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def exif_with_user_comment(text: str) -> bytes:
    """EXIF bytes carrying ``text`` as a Unicode UserComment, for JPEG/WebP ``save(exif=...)``.

    Written with piexif, exactly as A1111's ``save_image_with_geninfo`` writes it (prefix
    b"UNICODE\\0", then UTF-16 big-endian, tag type UNDEFINED), so that A1111's PNG Info and
    the tools that read like it (``piexif.load``, then ``UserComment.load``) find the text.
    Pillow's own Exif stores bytes as type BYTE, which piexif reads as a list of numbers.
    """
    comment = piexif.helper.UserComment.dump(text, encoding="unicode")
    return bytes(piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}}))


def _decode_utf16(body: bytes) -> str:
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16")  # a BOM says which
    # piexif (A1111) writes big-endian; other tools write little-endian. Mostly-ASCII
    # text has its zero bytes first (BE) or second (LE) in each pair.
    high_first = body[0::2].count(0)
    high_second = body[1::2].count(0)
    orders = ("utf-16-le", "utf-16-be") if high_second > high_first else ("utf-16-be", "utf-16-le")
    for encoding in orders:
        try:
            return body.decode(encoding)
        except UnicodeDecodeError:
            continue
    return body.decode(orders[0], errors="replace")


def decode_user_comment(raw: bytes | str) -> str:
    """An EXIF UserComment value as text, whatever character code prefix it carries."""
    if isinstance(raw, str):
        return raw.rstrip("\0")
    prefix, body = raw[:8], raw[8:]
    if prefix == _UNICODE:
        text = _decode_utf16(body[: len(body) - len(body) % 2])
    elif prefix == _JIS:
        text = body.decode("shift_jis", errors="replace")
    elif prefix in (_ASCII, b"\0" * 8):
        text = body.decode("utf-8", errors="replace")
    else:
        # No valid prefix: A1111 decodes the whole value as UTF-8.
        text = raw.decode("utf-8", errors="ignore")
    return text.rstrip("\0")


def _exif_comment(image: Image.Image) -> str | None:
    try:
        raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except Exception:  # a corrupt EXIF block must not make the image unreadable
        return None
    if not isinstance(raw, (bytes, str)) or not raw:
        return None
    return decode_user_comment(raw) or None


def png_info(image: Image.Image) -> str | None:
    """The `parameters` text of a loaded image, or None.

    As A1111's read_info_from_image: a non-empty EXIF UserComment (JPEG, WebP, or a PNG's
    eXIf chunk) wins over the PNG `parameters` text chunk; a GIF comment is the last resort.
    """
    info = image.info or {}
    comment = _exif_comment(image)
    if comment:
        return comment
    parameters = info.get("parameters")
    if isinstance(parameters, bytes):
        parameters = parameters.decode("utf-8", errors="replace")
    if isinstance(parameters, str) and parameters:
        return parameters
    gif_comment = info.get("comment")
    if isinstance(gif_comment, bytes) and gif_comment:
        return gif_comment.decode("utf-8", errors="ignore")
    return None


# --- hashes ----------------------------------------------------------------------------

_BLOCK = 1 << 20


def sha256_file(path: Path, offset: int = 0) -> str:
    """Hex sha256 of a file from ``offset`` on, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        f.seek(offset)
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def model_hash(path: Path) -> str:
    """A1111's "Model hash": the first 10 hex digits of the checkpoint's sha256."""
    return sha256_file(path)[:10]


def short_hash(path: Path) -> str:
    """First 12 hex digits of sha256, as A1111's "TI hashes" (and Lora hashes of .pt files)."""
    return sha256_file(path)[:12]


def _safetensors_header(path: Path) -> tuple[int, dict[str, object]]:
    with Path(path).open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return 8 + size, header if isinstance(header, dict) else {}


def lora_hash(path: Path) -> str:
    """A1111's "Lora hashes" entry for one file.

    For .safetensors A1111 takes the trainer's `sshs_model_hash` metadata when present,
    else kohya's "addnet" hash: sha256 of the tensor data after the JSON header (the
    hash civitai lists as AutoV3). Other files: plain sha256. First 12 hex digits.
    """
    if Path(path).suffix.lower() != ".safetensors":
        return short_hash(path)
    offset, header = _safetensors_header(path)
    metadata = header.get("__metadata__")
    if isinstance(metadata, dict):
        stored = metadata.get("sshs_model_hash")
        if isinstance(stored, str) and stored:
            return stored[:12]
    return sha256_file(path, offset)[:12]
