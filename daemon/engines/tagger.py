"""Booru-style taggers: WD14 ONNX taggers and A1111's DeepDanbooru, behind one interface.

Two model formats are read (:func:`load_tagger` tells them apart):

* **WD14-style** (SmilingWolf's taggers and their many retrainings, the format most users
  have): a folder holding ``model.onnx`` and ``selected_tags.csv``. The CSV has a header and
  the columns ``tag_id,name,category,count``, one row per model output, in output order;
  ``category`` is 9 for the four ratings (``general``, ``sensitive``, ``questionable``,
  ``explicit``), 0 for general tags and 4 for characters. The model takes NHWC float32 BGR
  pixels in 0–255 at the square size in its input shape (448 for the published ones) and
  outputs one sigmoid score per row. Its input is prepared as the taggers were trained:
  transparency composited onto white, the image padded to a centred white square, then
  resized with an area filter when shrinking or bicubic when enlarging (:func:`wd14_input`).
  onnxruntime runs it, on CUDA when asked for and available.
* **DeepDanbooru**: A1111's ``model-resnet_custom_v3.pt`` (a torch pickle), see
  :mod:`daemon.engines.deepdanbooru`. It is only read when the configuration allows pickles.

Turning scores into a prompt line is one pure function, :func:`format_tags`, with A1111's
options (:class:`TaggerOptions`): threshold, separate character threshold, alphabetical or
score order, underscores to spaces (kaomoji excepted), escaping of ``\\ ( )``, excluded tags,
the rating first, and ``(tag:0.987)`` ranks.

:func:`build_tiny_tagger` writes a tiny WD14-style tagger with random weights, for trying the
flow offline and for tests; it loads exactly like a real one.

onnxruntime and torch are imported inside the functions that need them: importing this
module is instant.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from daemon.a1111.imaging import flatten_on_white
from daemon.errors import ConfigError
from daemon.models.layouts import WD14_MODEL, WD14_TAGS

if TYPE_CHECKING:
    from collections.abc import Mapping

CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4
CATEGORY_RATING = 9

WD14_DEFAULT_THRESHOLD = 0.35
WD14_DEFAULT_SIZE = 448  # the published taggers' size, for a model whose input size is dynamic
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")

KAOMOJI = frozenset(
    {
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
    }
)
"""Tags whose underscore is part of the face: they keep it when underscores become spaces."""

_SPECIAL = re.compile(r"([\\()])")  # A1111's escape: these would read as prompt syntax
_ESCAPED = re.compile(r"\\([\\()])")


# ---------------------------------------------------------------------------------------------
# Options and results


@dataclass(frozen=True)
class TaggerOptions:
    """How scores become a line (profile keys, A1111's semantics).

    ``threshold`` None means the model's own default (WD14 0.35, DeepDanbooru 0.5);
    ``sort_alpha`` None means the model's usual order (DeepDanbooru alphabetical, as A1111;
    WD14 by score, as the WD14 tagger). ``character_threshold`` applies to WD14 character
    tags only (DeepDanbooru has no categories)."""

    threshold: float | None = None
    character_threshold: float = 0.85
    sort_alpha: bool | None = None
    use_spaces: bool = True
    escape: bool = True
    exclude_tags: tuple[str, ...] = ()
    include_ratings: bool = False
    return_ranks: bool = False

    def __post_init__(self) -> None:
        # A1111 takes the exclusions as one comma-separated string; accept that and lists.
        raw: Iterable[str] = (
            [self.exclude_tags] if isinstance(self.exclude_tags, str) else self.exclude_tags
        )
        split = tuple(part.strip() for item in raw for part in item.split(",") if part.strip())
        object.__setattr__(self, "exclude_tags", split)


@dataclass(frozen=True)
class TagInfo:
    """One model output: the tag's name as the model knows it, and its category.

    ``category`` is the WD14 CSV's number, or None when the model does not say (DeepDanbooru's
    non-rating tags)."""

    name: str
    category: int | None = CATEGORY_GENERAL


@dataclass(frozen=True)
class KeptTag:
    text: str  # as written in the line
    name: str  # the model's raw name
    score: float
    category: int | None


@dataclass(frozen=True)
class TagResult:
    """``line`` is ``", ".join(tag.text for tag in tags)``; ``ratings`` has every rating's
    score (whether or not one is in the line), in model order."""

    line: str
    tags: tuple[KeptTag, ...]
    ratings: Mapping[str, float] = field(default_factory=dict, hash=False)


# ---------------------------------------------------------------------------------------------
# Scores → line


def tag_key(name: str) -> str:
    """How exclusions match: case, spaces vs underscores and prompt escapes do not matter."""
    return _ESCAPED.sub(r"\1", name.strip()).lower().replace(" ", "_")


def write_tag(name: str, score: float, options: TaggerOptions) -> str:
    """A tag as it appears in the line, in A1111's order: spaces, escapes, rank."""
    text = name
    if options.use_spaces and name not in KAOMOJI:
        text = text.replace("_", " ")
    if options.escape:
        text = _SPECIAL.sub(r"\\\1", text)
    if options.return_ranks:
        text = f"({text}:{score:.3f})"
    return text


def format_tags(
    scores: Sequence[float] | NDArray[np.floating[Any]],
    tags: Sequence[TagInfo],
    options: TaggerOptions,
    *,
    default_threshold: float,
    default_sort_alpha: bool,
) -> TagResult:
    """The line for one image's ``scores`` (one per entry of ``tags``).

    Tags at or above the threshold are kept (characters against ``character_threshold``),
    ratings never by threshold: with ``include_ratings`` the best-scoring one leads the line.
    Score order keeps the model's order between equal scores."""
    if len(scores) != len(tags):
        raise ValueError(f"{len(scores)} scores for {len(tags)} tags")
    threshold = default_threshold if options.threshold is None else options.threshold
    sort_alpha = default_sort_alpha if options.sort_alpha is None else options.sort_alpha
    excluded = {tag_key(name) for name in options.exclude_tags}

    ratings: dict[str, float] = {}
    kept: list[tuple[TagInfo, float]] = []
    for tag, raw in zip(tags, scores, strict=True):
        score = float(raw)
        if tag.category == CATEGORY_RATING:
            ratings[tag.name] = score
            continue
        limit = options.character_threshold if tag.category == CATEGORY_CHARACTER else threshold
        if score >= limit and tag_key(tag.name) not in excluded:
            kept.append((tag, score))

    if sort_alpha:
        kept.sort(key=lambda pair: pair[0].name)
    else:
        kept.sort(key=lambda pair: -pair[1])
    if options.include_ratings and ratings:
        best = max(ratings, key=ratings.__getitem__)  # the first of equal scores
        if tag_key(best) not in excluded:
            kept.insert(0, (TagInfo(best, CATEGORY_RATING), ratings[best]))

    written = tuple(
        KeptTag(write_tag(tag.name, score, options), tag.name, score, tag.category)
        for tag, score in kept
    )
    return TagResult(", ".join(tag.text for tag in written), written, ratings)


# ---------------------------------------------------------------------------------------------
# Taggers


class Tagger:
    """A loaded tagger. Drop it (or call :meth:`unload`) to free its memory."""

    kind: ClassVar[str]
    default_threshold: ClassVar[float]
    default_sort_alpha: ClassVar[bool]
    tags: tuple[TagInfo, ...]

    def predict(self, image: Image.Image) -> NDArray[np.float32]:
        """One score in 0–1 per entry of :attr:`tags`."""
        raise NotImplementedError

    def tag(self, image: Image.Image, options: TaggerOptions | None = None) -> TagResult:
        return format_tags(
            self.predict(image),
            self.tags,
            options or TaggerOptions(),
            default_threshold=self.default_threshold,
            default_sort_alpha=self.default_sort_alpha,
        )

    def unload(self) -> None:
        """Release the model; :meth:`predict` fails afterwards."""


def wd14_input(image: Image.Image, size: int) -> NDArray[np.float32]:
    """The WD14 taggers' input: ``(1, size, size, 3)`` float32 BGR in 0–255.

    Transparency goes onto white and the padding is white, as in training. The area filter
    (Pillow's BOX, an average over each output pixel's footprint, like OpenCV's INTER_AREA
    that the original tagger used) avoids aliasing when shrinking; bicubic when enlarging."""
    rgb = flatten_on_white(image)
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side > size:
        square = square.resize((size, size), Image.Resampling.BOX)
    elif side < size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB → BGR
    return np.ascontiguousarray(pixels)[np.newaxis]


class Wd14Tagger(Tagger):
    """A WD14-style ONNX tagger: 0.35 threshold and score order by default."""

    kind = "wd14"
    default_threshold = WD14_DEFAULT_THRESHOLD
    default_sort_alpha = False

    def __init__(self, session: Any, tags: Sequence[TagInfo], size: int) -> None:
        self.tags = tuple(tags)
        self.size = size
        self._session: Any = session
        self._input = session.get_inputs()[0].name

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []

    def predict(self, image: Image.Image) -> NDArray[np.float32]:
        if self._session is None:
            raise RuntimeError("this tagger was unloaded")
        outputs = self._session.run(None, {self._input: wd14_input(image, self.size)})
        return np.asarray(outputs[0][0], dtype=np.float32)  # first output, first image

    def unload(self) -> None:
        self._session = None


def read_wd14_tags(path: Path) -> list[TagInfo]:
    """The rows of a ``selected_tags.csv``: name and category, in output order."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"tagger tag list {path} cannot be read: {exc}") from exc
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ConfigError(
            f"tagger tag list {path} is not a WD14 tag list: it needs a header with "
            "'name' and 'category' columns and one row per tag"
        )
    tags = []
    for number, row in enumerate(rows, start=2):
        try:
            tags.append(TagInfo(row["name"], int(row["category"])))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"tagger tag list {path}, line {number}: category {row.get('category')!r} "
                "is not a number"
            ) from exc
    return tags


def _onnx_providers(device: str) -> list[str]:
    """CUDA first when asked for and this onnxruntime build has it, CPU always as fallback."""
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in (
        onnxruntime.get_available_providers()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def load_wd14(folder: Path, *, device: str = "cpu") -> Wd14Tagger:
    """The WD14 tagger in ``folder`` (``model.onnx`` + ``selected_tags.csv``)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"tagger {folder} is an ONNX model and needs onnxruntime: "
            "pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from exc

    tags = read_wd14_tags(folder / WD14_TAGS)
    model = folder / WD14_MODEL
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    try:
        session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=_onnx_providers(device)
        )
    except Exception as exc:  # onnxruntime's own error types vary by build
        raise ConfigError(
            f"tagger model {model} cannot be loaded; the file is damaged or not an ONNX "
            f"model ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
        ) from exc

    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or shape[3] != 3:
        raise ConfigError(
            f"tagger model {model} takes input of shape {shape}; a WD14 tagger takes "
            "(batch, height, width, 3) pixels"
        )
    size = shape[1] if isinstance(shape[1], int) else WD14_DEFAULT_SIZE
    outputs = session.get_outputs()[0].shape
    if isinstance(outputs[-1], int) and outputs[-1] != len(tags):
        raise ConfigError(
            f"tagger model {model} scores {outputs[-1]} tags but {folder / WD14_TAGS} "
            f"lists {len(tags)}: the two files do not belong together"
        )
    return Wd14Tagger(session, tags, size)


# ---------------------------------------------------------------------------------------------
# Loading
