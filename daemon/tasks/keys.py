"""The profile keys, in the groups that tasks share, each group a pydantic mixin.

A task's own key model (in its module) is the groups it uses, composed; ``Profile`` (the
effective settings, :mod:`daemon.config.profiles`) is every group. So a key, its range, its
A1111 default and its validator are written once, here, and each task accepts only the keys
that mean something to it. Keys are named as A1111's img2img API names them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from daemon.a1111.samplers import SamplerChoice, parse_sampler
from daemon.a1111.sizes import ResizeMode
from daemon.controlnet.ip_adapter_keys import IPAdapterKeys
from daemon.controlnet.modules import module_named
from daemon.controlnet.reference import is_reference
from daemon.controlnet.units import ControlNetKeys
from daemon.temporal.keys import TemporalKeys

Interrogator = Literal["clip", "deepbooru"]
ClipMode = Literal["fast", "classic", "best", "negative"]
DEFAULT_INTERROGATE_MODEL = "Salesforce/blip-image-captioning-large + openai/clip-vit-large-patch14"
"""BLIP large for the caption, CLIP ViT-L/14 (SD 1.x's text encoder) for the ranking."""
DEFAULT_TAGGER_MODEL = "SmilingWolf/wd-v1-4-moat-tagger-v2"
"""The WD14 tagger most A1111 users run (an ONNX folder on the hub)."""
PROMPT_SOURCES: dict[str, Interrogator] = {"{interrogate}": "clip", "{tags}": "deepbooru"}
"""Placeholders a painting prompt may hold, and the interrogator that fills each."""
MaskedContent = Literal["fill", "original", "latent noise", "latent nothing"]
MASKED_CONTENT: tuple[MaskedContent, ...] = ("fill", "original", "latent noise", "latent nothing")
Offload = Literal["auto", "none", "model", "sequential"]
"""Where a diffusion model's weights live between uses (daemon/render/offload.py): ``auto``
decides from the model's size and the GPU's free memory; ``none`` all on the GPU; ``model``
each part moved to the GPU while it runs; ``sequential`` layer by layer (slowest, least)."""


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):  # A1111 takes "a, b, c"
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _masked_content(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(MASKED_CONTENT):
        return MASKED_CONTENT[value]  # A1111's API sends 0..3
    return value.strip().lower() if isinstance(value, str) else value


def _mask_mode(value: Any) -> Any:
    if isinstance(value, str):  # A1111 labels
        label = value.strip().lower()
        if label in ("inpaint masked", "inpaint not masked"):
            return label == "inpaint not masked"
    return value


def _output_format(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip().lower().lstrip(".")
        return "jpg" if value == "jpeg" else value
    return value


CommaList = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]


class Keys(BaseModel):
    """Every key group: an unknown key is an error, and the values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CommonKeys(Keys):
    """What every task has: its name, its model, and how its results are written."""

    task: str  # a name in daemon.tasks.registry (the profile loader fills in the default)
    model: str = Field(min_length=1)
    overwrite: bool = False
    # Live: inputs stay and re-render whenever an editor exports them again (Photoshop's
    # Generator, Krita, GIMP); the result is replaced in place.
    live: bool = False
    live_delay: float = Field(0.25, ge=0.0, le=60.0)  # s an input must be quiet to render
    live_grace: float = Field(5.0, ge=0.0, le=3600.0)  # s a deleted input may come back


class PaintingKeys(Keys):
    """A diffusion model repainting the input: A1111's img2img settings."""

    vae: str | None = None  # overrides the model's VAE: a file/folder, or a name in models_dir/VAE
    clip_skip: int = Field(1, ge=1, le=12)  # A1111's "Clip skip"
    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    # Forge's "Distilled CFG Scale": the guidance Flux-dev was distilled to follow (one pass)
    distilled_cfg_scale: float = Field(3.5, ge=0.0, le=30.0)
    # A flow model's static schedule shift; None: the model's own (static or from image size)
    shift: float | None = Field(None, gt=0.0, le=100.0)
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    width: int | None = Field(None, ge=8, le=8192)
    height: int | None = Field(None, ge=8, le=8192)
    max_pixels: int = Field(512 * 512, ge=64, le=8192 * 8192)
    scale: float | None = Field(None, gt=0.0, le=8.0)
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    img2img_fix_steps: bool = False
    batch_size: int = Field(1, ge=1, le=16)
    n_iter: int = Field(1, ge=1, le=100)
    use_png_info: bool = False  # A1111 batch "PNG info": settings from the input's parameters
    # GPU memory: the daemon's `offload` when unset. The first profile to load a model decides
    # for as long as it stays loaded (daemon/render/offload.py).
    offload: Offload | None = None

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

    @model_validator(mode="after")
    def _one_size_and_a_known_sampler(self) -> Any:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ValueError("set either scale or width/height, not both")
        try:
            self.sampler  # noqa: B018 - raises ValueError listing the valid labels
        except ValueError as exc:
            raise ValueError(f"sampler_name / scheduler: {exc}") from exc
        return self

    @property
    def sampler(self) -> SamplerChoice:
        return parse_sampler(self.sampler_name, self.scheduler, shift=self.shift)

    @property
    def prompt_sources(self) -> tuple[Interrogator, ...]:
        """The interrogators a prompt asks for with {interrogate} / {tags}."""
        text = self.prompt + self.negative_prompt
        found = {kind for mark, kind in PROMPT_SOURCES.items() if mark in text}
        return tuple(sorted(found))


class MaskKeys(Keys):
    """How a mask is used: A1111's inpaint settings."""

    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: Annotated[MaskedContent, BeforeValidator(_masked_content)] = "original"
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = Field(32, ge=0, le=1024)
    inpainting_mask_invert: Annotated[bool, BeforeValidator(_mask_mode)] = False


class ImageOutputKeys(Keys):
    """Pictures written with their parameters."""

    output_format: Annotated[Literal["png", "jpg", "webp"], BeforeValidator(_output_format)] = "png"
    output_quality: int = Field(95, ge=1, le=100)
    # The input's transparency on its result (PNG/WebP; JPEG has none). None: on for live
    # profiles (a layer round trip through an editor), off otherwise
    keep_alpha: bool | None = None


class SequenceKeys(Keys):
    """Clips: a sub-folder of frames, or a video file."""

    seed_mode: Literal["fixed", "increment", "random"] = "fixed"  # one seed for every frame
    color_correction: bool | None = None  # frames matched to the first one's colours; None:
    # on for clips (sub-folders and videos), off for single images
    keep_frames: bool = False  # a video's repainted frames also go to outbox/<profile>/<stem>/
    # Frames of a video painted in one pipeline call; None: the daemon's max_batch
    max_batch: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] | None = None


class RankKeys(Keys):
    return_ranks: bool = False  # terms (and tags) as (term:0.123)


class ClipKeys(RankKeys):
    """CLIP interrogation: A1111's interrogate options; modes as clip-interrogator's."""

    mode: ClipMode = "classic"
    caption_min_length: int = Field(24, ge=0, le=512)
    caption_max_length: int = Field(48, ge=1, le=512)
    num_beams: int = Field(1, ge=1, le=16)
    top_n: int | None = Field(None, ge=1, le=100)  # terms per list; default: the list's .topN
    max_flavors: int = Field(32, ge=1, le=256)  # fast/best/negative: terms at most
    dict_limit: int = Field(1500, ge=0, le=1_000_000)  # first N terms of each list; 0 = all
    skip_categories: CommaList = ()
    labels_dir: str | None = None  # the user's lists: same name replaces ours, new name adds

    @model_validator(mode="after")
    def _caption_lengths(self) -> Any:
        if self.caption_min_length > self.caption_max_length:
            raise ValueError(
                f"caption_min_length ({self.caption_min_length}) is over caption_max_length "
                f"({self.caption_max_length})"
            )
        return self


class TaggerKeys(RankKeys):
    """Tagging: A1111's DeepBooru options; WD14's thresholds."""

    threshold: float | None = Field(None, ge=0.0, le=1.0)  # default 0.35 WD14, 0.5 DeepDanbooru
    character_threshold: float = Field(0.85, ge=0.0, le=1.0)
    sort_alpha: bool | None = None  # default: DeepDanbooru alphabetical, WD14 by score
    use_spaces: bool = True
    escape: bool = True
    exclude_tags: CommaList = ()
    include_ratings: bool = False


class PromptSourceKeys(ClipKeys, TaggerKeys):
    """The interrogators that fill a painting prompt's {interrogate} / {tags}, and their
    options (``model`` is then the diffusion model)."""

    interrogate_model: str = Field(DEFAULT_INTERROGATE_MODEL, min_length=1)
    tagger_model: str = Field(DEFAULT_TAGGER_MODEL, min_length=1)


class CaptionKeys(Keys):
    """A description written as a caption (``model`` is then the interrogation model)."""

    copy_image: bool = False  # the image beside its caption: the outbox is a training set


class InterrogatorKeys(Keys):
    interrogator: Interrogator = "clip"


class PaintingTaskKeys(
    CommonKeys,
    PaintingKeys,
    MaskKeys,
    SequenceKeys,
    ImageOutputKeys,
    PromptSourceKeys,
    ControlNetKeys,
    IPAdapterKeys,
    TemporalKeys,
):
    """What a painting task accepts: the mask keys too, since any painting task inpaints when
    a mask comes with its input."""

    @model_validator(mode="after")
    def _temporal_for_clips(self) -> Any:
        if self.live and (self.temporal or self.loopback_units):
            raise ValueError(
                "temporal and ControlNet loopback work across the frames of a clip folder or "
                "a video; a live profile paints each export on its own: drop them or live"
            )
        if self.uses("key_frame_attention") and any(
            is_reference(module_named(unit.module).name) for unit in self.enabled_units
        ):
            raise ValueError(
                "key_frame_attention and a reference_only unit both steer the UNet's "
                "self-attention and cannot paint together: remove one of them"
            )
        if self.temporal and (self.batch_size > 1 or self.n_iter > 1):
            raise ValueError(
                "temporal paints one image per frame (each the next frame's previous): set "
                "batch_size and n_iter to 1"
            )
        return self
