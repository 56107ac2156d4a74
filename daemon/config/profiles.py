"""Profiles: one YAML file per inbox folder, keyed with A1111's API names.

``profiles/<name>.yaml`` serves ``inbox/<name>/``. A profile may ``extends:`` another (files
whose names start with ``_`` are bases only). Profiles are re-read when their files change,
so an edit takes effect for the next job without a restart. Validation reports the file, the
key and what is allowed; ``check_all`` collects every problem of every profile at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.a1111.samplers import SamplerChoice, parse_sampler
from daemon.a1111.sizes import ResizeMode
from daemon.config.validation import Where, describe
from daemon.config.yamlsafe import YamlProblem, key_lines, read_mapping
from daemon.errors import ConfigError, InputError
from daemon.paths import shown

Task = Literal["img2img", "sketch", "inpaint", "inpaint_sketch", "interrogate"]
Interrogator = Literal["clip", "deepbooru"]
ClipMode = Literal["fast", "classic", "best", "negative"]
DEFAULT_INTERROGATE_MODEL = "Salesforce/blip-image-captioning-large + openai/clip-vit-large-patch14"
"""BLIP large for the caption, CLIP ViT-L/14 (SD 1.x's text encoder) for the ranking."""
DEFAULT_TAGGER_MODEL = "SmilingWolf/wd-v1-4-moat-tagger-v2"
"""The WD14 tagger most A1111 users run (an ONNX folder on the hub)."""
PROMPT_SOURCES = {"{interrogate}": "clip", "{tags}": "deepbooru"}
"""Placeholders an img2img prompt may hold, and the interrogator that fills each."""
MaskedContent = Literal["fill", "original", "latent noise", "latent nothing"]
MASKED_CONTENT: tuple[MaskedContent, ...] = ("fill", "original", "latent noise", "latent nothing")
MAX_EXTENDS_DEPTH = 8
# Per-image YAML sits in the inbox, which anyone who can drop a file can write: it may tune
# the generation but never choose which files are loaded.
NOT_PER_IMAGE = frozenset(
    {"model", "vae", "extends", "interrogate_model", "tagger_model", "labels_dir"}
)


class Profile(BaseModel):
    """The effective settings of one job. Defaults are A1111's img2img UI defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task = "img2img"
    model: str = Field(min_length=1)
    vae: str | None = None  # overrides the model's VAE: a file/folder, or a name in models_dir/VAE
    clip_skip: int = Field(1, ge=1, le=12)  # A1111's "Clip skip"
    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    width: int | None = Field(None, ge=8, le=8192)
    height: int | None = Field(None, ge=8, le=8192)
    max_pixels: int = Field(512 * 512, ge=64, le=8192 * 8192)
    scale: float | None = Field(None, gt=0.0, le=8.0)
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    img2img_fix_steps: bool = False
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: MaskedContent = "original"
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = Field(32, ge=0, le=1024)
    inpainting_mask_invert: bool = False
    batch_size: int = Field(1, ge=1, le=16)
    n_iter: int = Field(1, ge=1, le=100)
    output_format: Literal["png", "jpg", "webp"] = "png"
    output_quality: int = Field(95, ge=1, le=100)
    overwrite: bool = False
    # Live: inputs stay and re-render whenever an editor exports them again (Photoshop's
    # Generator, Krita, GIMP); the result is replaced in place.
    live: bool = False
    live_delay: float = Field(0.25, ge=0.0, le=60.0)  # s an input must be quiet to render
    live_grace: float = Field(5.0, ge=0.0, le=3600.0)  # s a deleted input may come back
    use_png_info: bool = False  # A1111 batch "PNG info": settings from the input's parameters

    # Clips: a sub-folder of frames, or a video file
    seed_mode: Literal["fixed", "increment", "random"] = "fixed"  # one seed for every frame
    color_correction: bool | None = None  # frames matched to the first one's colours; None:
    # on for clips (sub-folders and videos), off for single images
    keep_frames: bool = False  # a video's repainted frames also go to outbox/<profile>/<stem>/
    # Frames of a video painted in one pipeline call; None: the daemon's max_batch
    max_batch: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] | None = None

    # Interrogation: `task: interrogate` (then `model:` is the interrogation model), or the
    # {interrogate} / {tags} placeholders of an img2img prompt (then the *_model keys).
    interrogator: Interrogator = "clip"
    copy_image: bool = False  # the image beside its caption: the outbox is a training set
    interrogate_model: str = Field(DEFAULT_INTERROGATE_MODEL, min_length=1)
    tagger_model: str = Field(DEFAULT_TAGGER_MODEL, min_length=1)
    # CLIP (A1111's interrogate options; modes as clip-interrogator's)
    mode: ClipMode = "classic"
    caption_min_length: int = Field(24, ge=0, le=512)
    caption_max_length: int = Field(48, ge=1, le=512)
    num_beams: int = Field(1, ge=1, le=16)
    top_n: int | None = Field(None, ge=1, le=100)  # terms per list; default: the list's .topN
    max_flavors: int = Field(32, ge=1, le=256)  # fast/best/negative: terms at most
    dict_limit: int = Field(1500, ge=0, le=1_000_000)  # first N terms of each list; 0 = all
    skip_categories: tuple[str, ...] = ()
    return_ranks: bool = False  # terms (and tags) as (term:0.123)
    labels_dir: str | None = None  # the user's lists: same name replaces ours, new name adds
    # Tagger (A1111's DeepBooru options; WD14's thresholds)
    threshold: float | None = Field(None, ge=0.0, le=1.0)  # default 0.35 WD14, 0.5 DeepDanbooru
    character_threshold: float = Field(0.85, ge=0.0, le=1.0)
    sort_alpha: bool | None = None  # default: DeepDanbooru alphabetical, WD14 by score
    use_spaces: bool = True
    escape: bool = True
    exclude_tags: tuple[str, ...] = ()
    include_ratings: bool = False

    @field_validator("width", "height", mode="before")
    @classmethod
    def _auto_size(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8, such as {value - value % 8 or 8}")
        return value

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, value: Any) -> ResizeMode:
        return ResizeMode.parse(value)

    @field_validator("inpainting_fill", mode="before")
    @classmethod
    def _masked_content(cls, value: Any) -> Any:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value < len(MASKED_CONTENT)
        ):
            return MASKED_CONTENT[value]  # A1111's API sends 0..3
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("output_format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower().lstrip(".")
            return "jpg" if value == "jpeg" else value
        return value

    @field_validator("exclude_tags", "skip_categories", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # A1111 takes "a, b, c"
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("inpainting_mask_invert", mode="before")
    @classmethod
    def _mask_mode(cls, value: Any) -> Any:
        if isinstance(value, str):  # A1111 labels
            label = value.strip().lower()
            if label in ("inpaint masked", "inpaint not masked"):
                return label == "inpaint not masked"
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ValueError("set either scale or width/height, not both")
        if self.caption_min_length > self.caption_max_length:
            raise ValueError(
                f"caption_min_length ({self.caption_min_length}) is over caption_max_length "
                f"({self.caption_max_length})"
            )
        try:
            self.sampler  # noqa: B018 - raises ValueError listing the valid labels
        except ValueError as exc:
            raise ValueError(f"sampler_name / scheduler: {exc}") from exc
        return self

    @property
    def sampler(self) -> SamplerChoice:
        return parse_sampler(self.sampler_name, self.scheduler)

    @property
    def prompt_sources(self) -> tuple[Interrogator, ...]:
        """The interrogators an img2img prompt asks for with {interrogate} / {tags}."""
        text = self.prompt + self.negative_prompt
        found = {kind for mark, kind in PROMPT_SOURCES.items() if mark in text}
        return tuple(sorted(found))  # type: ignore[arg-type]

    def interrogation_model(self, kind: Interrogator) -> str:
        """The model `kind` uses: ``model`` in an interrogate profile of that kind, else the
        ``interrogate_model`` / ``tagger_model`` key."""
        if self.task == "interrogate" and self.interrogator == kind:
            return self.model
        return self.interrogate_model if kind == "clip" else self.tagger_model

    @property
    def needs_mask(self) -> bool:
        return self.task == "inpaint"

    @property
    def needs_sketch(self) -> bool:
        return self.task in ("sketch", "inpaint_sketch")


PROFILE_KEYS = (*Profile.model_fields, "extends")
"""Every key a profile may set, for "did you mean" hints."""


@dataclass(frozen=True)
class LoadedProfile:
    name: str
    settings: Profile
    raw: dict[str, Any]  # merged keys before validation, so per-image YAML can be laid over
    files: tuple[Path, ...]  # the profile and the ones it extends, for change detection

    def where(self, key: str) -> str:
        """``file:line`` where this profile, or one it extends, sets `key` (for messages)."""
        path, line = _where(self.files).get(key, (self.files[0], 0))
        return f"{shown(path)}:{line}" if line else shown(path)

    def with_overrides(
        self, overrides: dict[str, Any], source: Path, *, yaml: Path | None = None
    ) -> Profile:
        """The profile with a per-image YAML laid over it; any problem is the file's fault.
        `source` names where the overrides came from; `yaml` is the per-image YAML among
        them, whose lines the problems point at."""
        forbidden = sorted(NOT_PER_IMAGE & overrides.keys())
        if forbidden:
            raise InputError(
                f"{source.name} sets '{forbidden[0]}', which only a profile may set "
                f"(models and bases come from profiles/{self.name}.yaml)"
            )
        interrogating = self.settings.task == "interrogate"
        task = overrides.get("task", self.settings.task)
        if (task == "interrogate") != interrogating or (
            "interrogator" in overrides and overrides["interrogator"] != self.settings.interrogator
        ):
            raise InputError(
                f"{source.name} turns this {self.settings.task} profile into another kind of "
                "work (task: interrogate, or another interrogator); only a profile may, since "
                "its model is of that kind"
            )
        try:
            return Profile.model_validate({**self.raw, **overrides})
        except ValidationError as exc:
            where: Where = {}
            if yaml is not None:
                where = {key: (yaml.name, line) for key, line in key_lines(yaml).items()}
            problems = describe(exc, source.name, known=PROFILE_KEYS, where=where)
            raise InputError(problems[0]) from exc


def profile_names(folder: Path) -> list[str]:
    """Names of the usable profiles (bases starting with ``_`` are not inbox folders)."""
    if not folder.is_dir():
        return []
    return sorted(
        path.stem for path in folder.glob("*.yaml") if not path.name.startswith(("_", "."))
    )


def load_profile(folder: Path, name: str) -> LoadedProfile:
    raw, files = _merged_raw(folder, name)
    try:
        settings = Profile.model_validate(raw)
    except ValidationError as exc:
        problems = describe(exc, files[0], known=PROFILE_KEYS, where=_where(files))
        raise ConfigError(problems[0], problems) from exc
    return LoadedProfile(name=name, settings=settings, raw=raw, files=files)


def _where(files: tuple[Path, ...]) -> Where:
    """Which file of an ``extends`` chain (the profile first) sets each key, and on which line."""
    where: dict[str, tuple[Path | str, int]] = {}
    for path in files:
        for key, line in key_lines(path).items():
            where.setdefault(key, (path, line))
    return where


def _merged_raw(folder: Path, name: str) -> tuple[dict[str, Any], tuple[Path, ...]]:
    chain: list[tuple[Path, dict[str, Any]]] = []
    current: str | None = name
    while current is not None:
        if "/" in current or "\\" in current or current.startswith("."):
            where = f"{shown(chain[-1][0])}: extends" if chain else shown(folder / f"{name}.yaml")
            raise ConfigError(f"{where}: '{current}' must be a profile name (no / \\ or leading .)")
        path = folder / f"{current}.yaml"
        if any(seen == path for seen, _ in chain):
            raise ConfigError(f"{shown(path)}: extends: '{current}' makes a loop")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise ConfigError(f"{shown(path)}: extends: more than {MAX_EXTENDS_DEPTH} levels")
        if not path.is_file():
            where = f"{shown(chain[-1][0])}: extends: " if chain else ""
            raise ConfigError(f"{where}profile {shown(path)} does not exist")
        try:
            data = read_mapping(path)
        except YamlProblem as exc:
            raise ConfigError(exc.at(path)) from exc
        parent = data.pop("extends", None)
        if parent is not None and not isinstance(parent, str):
            raise ConfigError(f"{shown(path)}: extends: must be a profile name (got {parent!r})")
        chain.append((path, data))
        current = parent
    merged: dict[str, Any] = {}
    for _, data in reversed(chain):
        merged.update(data)
    return merged, tuple(path for path, _ in chain)


class ProfileStore:
    """Profiles by name, re-read when any file of their ``extends`` chain changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[tuple[Path, int, int], ...], LoadedProfile]] = {}

    def get(self, name: str) -> LoadedProfile:
        with self._lock:
            cached = self._cache.get(name)
            if cached and cached[0] == _stamp(cached[1].files):
                return cached[1]
            profile = load_profile(self.folder, name)
            self._cache[name] = (_stamp(profile.files), profile)
            return profile

    def exists(self, name: str) -> bool:
        return (self.folder / f"{name}.yaml").is_file()


def _stamp(files: tuple[Path, ...]) -> tuple[tuple[Path, int, int], ...]:
    stamps = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            return ()
        stamps.append((path, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def check_all(folder: Path) -> tuple[dict[str, LoadedProfile], list[str]]:
    """Load every profile; return the good ones and every problem found."""
    loaded: dict[str, LoadedProfile] = {}
    problems: list[str] = []
    if not folder.is_dir():
        return loaded, [f"profiles folder {shown(folder)} does not exist"]
    for name in profile_names(folder):
        try:
            loaded[name] = load_profile(folder, name)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if not loaded and not problems:
        problems.append(f"profiles folder {shown(folder)} holds no profile (<name>.yaml)")
    # A base's problem shows in every profile that extends it, pointing at the base: once.
    return loaded, list(dict.fromkeys(problems))
