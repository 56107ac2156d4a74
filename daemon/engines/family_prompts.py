"""What differs per model family in one job, on the engine's side: the prompts encoded by
the family's own text encoders (T5, Qwen), its guidance in the call and the infotext, its
size rule, and the settings it replaces with the nearest it can follow (each with a note).

The SD families keep A1111's own prompt encoding (:mod:`daemon.engines.prompt_encoder`);
everything here is asked of :class:`daemon.families.Family`, never of a family's name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from daemon.a1111.prompt_plan import PromptPlan
from daemon.a1111.prompts import without_emphasis
from daemon.a1111.samplers import flow_infotext_fields, flow_sampler_note
from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import Profile
from daemon.engines.adapter_values import AppliedAdapters
from daemon.engines.conditioning import PromptConditioning
from daemon.engines.prompt_cache import PromptCache
from daemon.errors import ConfigError, InputError
from daemon.families import Family, Guidance


@dataclass(frozen=True)
class Conditioned:
    """A warm pipeline set up for one job, and how its prompts condition it."""

    pipe: Any
    family: Family
    applied: AppliedAdapters
    prompts: PromptConditioning  # the first per-call step of every pipeline call
    guidance: Guidance


NO_GUIDANCE = Guidance({}, {}, None)
"""Before the family has said how the job is guided."""


def family_conditioning(
    unset: Conditioned,
    plan: PromptPlan,
    settings: Profile,
    cache: PromptCache,
    loras_key: tuple[Any, ...],
    notes: list[str],
) -> Conditioned:
    """A family with its own text encoders (T5, Qwen): the plain prompt through the
    pipeline's own ``encode_prompt``, A1111's emphasis dropped with a note."""
    family, pipe = unset.family, unset.pipe
    if not plan.plain:
        raise InputError(
            f"{family.name} cannot follow A1111's prompt editing, alternation or AND "
            "([from:to:when], [a|b], AND): write the prompt without them"
        )
    texts = []
    for text in plan.fixed_texts:
        plain, weighted = without_emphasis(text)
        if weighted:
            notes.append(
                f"{family.name} does not take A1111's emphasis: weights like (word:1.2) "
                "were ignored and the words kept"
            )
        texts.append(plain)
    prompt, negative_prompt = texts
    sampler_note = flow_sampler_note(settings.sampler, pipeline_passes_sigmas=family.sets_sigmas)
    if sampler_note:
        notes.append(sampler_note)
    guidance = family.guide(
        pipe, cfg_scale=settings.cfg_scale, negative_prompt=negative_prompt,
        distilled_cfg_scale=settings.distilled_cfg_scale,
    )  # fmt: skip
    encode = family.encode
    assert encode is not None  # a family without its own encoder is A1111's
    key = (loras_key, "family", prompt, guidance.negative, settings.clip_skip)
    embeddings = cache.get(
        key, lambda: encode(pipe, prompt, guidance.negative, clip_skip=settings.clip_skip)
    )
    return replace(unset, prompts=PromptConditioning(embeddings, None), guidance=guidance)


def job_params(conditioned: Conditioned, settings: Profile) -> dict[str, object]:
    """What the job adds to the infotext: the family's guidance, a flow schedule's shift
    when the profile sets one (Forge writes none; SD.Next's "Sampler shift" is read back
    too), and the adapters' hashes."""
    family = conditioned.family
    sampler = (
        flow_infotext_fields(settings.sampler, pipeline_passes_sigmas=family.sets_sigmas)
        if family.flow
        else {}
    )
    return {**sampler, **conditioned.guidance.infotext, **conditioned.applied.infotext_params()}


def fit_size(family: Family, width: int, height: int, notes: list[str]) -> tuple[int, int]:
    fitted = family.fit_size(width, height)
    if fitted != (width, height):
        notes.append(
            f"{family.name} paints at multiples of {family.size_multiple} px: "
            f"{width}x{height} became {fitted[0]}x{fitted[1]}"
        )
    return fitted


def followable(family: Family, settings: Profile, notes: list[str]) -> Profile:
    """The settings with what the family cannot do replaced by the nearest it can, each
    with a note (``check`` warns about them ahead)."""
    update: dict[str, object] = {}
    if not family.latent_fill and settings.inpainting_fill in ("latent noise", "latent nothing"):
        update["inpainting_fill"] = "original"
        notes.append(
            f"masked content '{settings.inpainting_fill}' works on SD latents only; "
            f"{family.name} used 'original'"
        )
    if not family.latent_fill and settings.resize_mode is ResizeMode.LATENT_UPSCALE:
        update["resize_mode"] = ResizeMode.JUST_RESIZE
        notes.append(f"latent upscale works on SD latents only; {family.name} used just resize")
    return settings.model_copy(update=update) if update else settings


def whole_mask(family: Family, width: int, height: int) -> Image.Image | None:
    """The mask an img2img job is painted through by a family that paints img2img as
    inpaint (white: repaint everything); None for the others."""
    if not family.img2img_as_inpaint:
        return None
    if "inpaint" not in family.pipelines:
        raise ConfigError(f"{family.name} has no img2img or inpaint pipeline in diffusers: "
                          "use it with task: edit")  # fmt: skip
    return Image.new("L", (width, height), 255)
