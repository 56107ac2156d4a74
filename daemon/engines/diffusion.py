"""img2img, sketch and inpaint on diffusers, with A1111's pre- and post-processing.

The order of the steps follows A1111's img2img (REFERENCE-A1111.md, "The inpaint pipeline"):
mask → invert → blur → only-masked crop or whole-picture resize → masked content → sampling
→ paste back → overlay of the original through the mask. The pure image steps live in
``daemon.a1111.imaging`` and ``daemon.a1111.masks``; this module drives the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from daemon.a1111.imaging import resize_image
from daemon.a1111.masks import (
    fill_masked,
    only_masked_region,
    overlay_original,
    paste_back,
    prepare_mask,
)
from daemon.a1111.prompt_plan import PromptPlan, plan_prompts, timeline_steps
from daemon.a1111.prompts import extract_extra_networks
from daemon.a1111.samplers import SamplerChoice, second_order
from daemon.a1111.seeds import MAX_SEED
from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import Profile
from daemon.engines.adapters import AdapterManager
from daemon.engines.call_steps import CallContext, CallStep, Progress, run_call
from daemon.engines.conditioning import PromptConditioning, ScheduledConditioning
from daemon.engines.family_prompts import (
    NO_GUIDANCE,
    Conditioned,
    family_conditioning,
    fit_size,
    followable,
    job_params,
    whole_mask,
)
from daemon.engines.latents import encode_image, latent_mask, vae_tiling
from daemon.engines.prompt_cache import PromptCache
from daemon.engines.prompt_encoder import Embedded, PromptEncoder
from daemon.errors import InputError
from daemon.families import Family, family_of
from daemon.tasks.keys import Offload
from daemon.tasks.task import Pipeline

if TYPE_CHECKING:
    import torch

Region = tuple[int, int, int, int]


class Pipelines(Protocol):
    """Where the engine gets its warm pipelines (the render side's model cache)."""

    def pipeline(
        self, ref: str, task: Pipeline, *, vae: str | None = None, offload: Offload | None = None
    ) -> Any: ...
    def scheduler(self, ref: str, choice: SamplerChoice, *, vae: str | None = None) -> Any: ...
    def adapters(self, ref: str, task: Pipeline, *, vae: str | None = None) -> AdapterManager: ...
    def prompts(self, ref: str, *, vae: str | None = None) -> PromptCache: ...
    def low_memory(self, ref: str, *, vae: str | None = None) -> bool: ...


@dataclass(frozen=True)
class Canvas:
    """What the engine paints on: the (sketched, flattened) image and the optional raw mask."""

    image: Image.Image  # RGB, the input's own size
    mask: Image.Image | None  # L at the image's size; white = repaint (before invert/blur)


@dataclass(frozen=True)
class Painting:
    images: list[Image.Image]
    seeds: list[int]
    width: int  # processing size, A1111's "Size"
    height: int
    inpainted: bool
    notes: tuple[str, ...] = ()
    params: dict[str, object] = field(default_factory=dict)  # Lora hashes, TI hashes


def inference_steps(steps: int, strength: float, *, fix_steps: bool) -> tuple[int, float]:
    """(num_inference_steps, strength) for diffusers.

    diffusers runs int(N × strength) steps, which is A1111's default; A1111's
    ``img2img_fix_steps`` runs exactly ``steps`` by building the schedule for steps/strength.
    At least one step always runs (A1111 with strength 0 returns the VAE round-trip).
    """
    strength = min(max(strength, 0.0), 1.0)
    total = int(steps / min(strength, 0.999)) if fix_steps and strength > 0 else steps
    if int(total * strength) < 1:
        strength = 1.0 / total
    return total, strength


class DiffusionEngine:
    def __init__(self, models: Pipelines, *, steps: Sequence[CallStep] = ()) -> None:
        """`steps`: per-call steps that follow the prompts' conditioning in every pipeline
        call this engine makes (:mod:`daemon.engines.call_steps`), in order."""
        self.models = models
        self.steps = tuple(steps)

    def paint(
        self,
        canvas: Canvas,
        settings: Profile,
        *,
        width: int,
        height: int,
        seed: int,
        prompt: str,
        negative_prompt: str,
        on_step: Callable[[int, int], None] | None = None,
        correct: Callable[[Image.Image], Image.Image] | None = None,
    ) -> Painting:
        """Run the profile on the canvas; ``seed`` is already drawn (never -1).

        ``correct`` (colour correction) applies to each sampled image before the original is
        laid back over the unmasked part, as A1111 does, so unmasked pixels stay exact."""
        notes: list[str] = []
        family = self.family(settings)
        width, height = fit_size(family, width, height, notes)
        settings = followable(family, settings, notes)
        image, original = canvas.image, canvas.image
        mode = settings.resize_mode
        region: Region | None = None
        mask = overlay_mask = None
        if canvas.mask is not None:
            blurred = prepare_mask(
                canvas.mask, invert=settings.inpainting_mask_invert, blur=settings.mask_blur
            )
            if settings.inpaint_full_res:
                padding = settings.inpaint_full_res_padding
                region = only_masked_region(blurred, padding, width, height)
                if region is None:
                    notes.append("the mask is empty, so 'only masked' fell back to plain img2img")
                else:
                    mask = resize_image(
                        blurred.crop(region), ResizeMode.RESIZE_AND_FILL, width, height
                    )
                    image = resize_image(
                        image.crop(region), ResizeMode.RESIZE_AND_FILL, width, height
                    )
                    overlay_mask = blurred
            else:
                mask_mode = ResizeMode.JUST_RESIZE if mode is ResizeMode.LATENT_UPSCALE else mode
                mask = resize_image(blurred, mask_mode, width, height)
                # A1111 widens the overlay mask (×2) so the seam falls inside the repainted area.
                overlay_mask = mask.point(lambda v: min(255, v * 2))
        if region is None and (mask is not None or mode is not ResizeMode.LATENT_UPSCALE):
            if mask is not None and mode is ResizeMode.LATENT_UPSCALE:
                notes.append("latent upscale does not apply to inpainting; used just resize")
                mode = ResizeMode.JUST_RESIZE
            image = resize_image(image, mode, width, height)
            original = image
        if mask is not None and settings.inpainting_fill == "fill":
            image = fill_masked(image, mask)

        # A family without an img2img pipeline paints img2img as inpaint, the whole picture masked.
        whole = whole_mask(family, width, height) if mask is None else None
        task: Pipeline = "img2img" if mask is None and whole is None else "inpaint"
        conditioned = self._conditioning(
            settings, task, width * height, prompt, negative_prompt, notes
        )
        pipe, flow = conditioned.pipe, conditioned.family.flow

        def inputs_for(generators: list[torch.Generator]) -> dict[str, Any]:
            if mask is None and whole is None:
                init = self._init_image(pipe, image, settings, width, height, generators)
                # Flow pipelines paint at 1024² unless told the size, whatever the input.
                return {"image": init, **({"width": width, "height": height} if flow else {})}
            repaint = mask if mask is not None else whole
            assert repaint is not None
            inputs = self._inpaint_inputs(pipe, image, repaint, settings, generators)
            return {**inputs, "width": width, "height": height}

        images, seeds = self._sample(conditioned, settings, inputs_for, seed=seed, on_step=on_step)
        if correct is not None and region is not None:
            # A crop around the mask has other colours than the whole reference: matching
            # them would shift the repainted part's hue, so "only masked" is left as painted.
            notes.append("colour correction does not apply to 'only masked' inpainting")
        elif correct is not None:
            images = [correct(result) for result in images]
        if mask is not None and overlay_mask is not None:
            if region is not None:
                images = [paste_back(result, canvas.image, region) for result in images]
                original = canvas.image
            images = [overlay_original(result, original, overlay_mask) for result in images]
        return Painting(
            images, seeds, width, height, inpainted=mask is not None, notes=tuple(notes),
            params=job_params(conditioned, settings),
        )  # fmt: skip

    def family(self, settings: Profile) -> Family:
        """The family of the profile's model (loading it: every job needs it loaded)."""
        return family_of(
            self.models.pipeline(
                settings.model, "img2img", vae=settings.vae, offload=settings.offload
            )
        )

    def _sample(
        self,
        conditioned: Conditioned,
        settings: Profile,
        inputs_for: Callable[[list[torch.Generator]], dict[str, Any]],
        *,
        seed: int,
        on_step: Callable[[int, int], None] | None,
        strength: bool = True,
    ) -> tuple[list[Image.Image], list[int]]:
        """`n_iter` pipeline calls of `batch_size` images each, seeds counting up; each
        call's image inputs made by `inputs_for` with its generators. ``strength=False``: a
        pipeline that starts from noise (an edit without a mask) runs all ``steps``."""
        context = CallContext(images=settings.batch_size, per_prompt=settings.batch_size)
        steps: tuple[CallStep, ...] = ()
        if on_step is not None:
            each = _steps_run(conditioned.family, settings) if strength else settings.steps
            steps = (Progress(on_step, settings.n_iter * each),)  # one count across calls
        outputs: list[Image.Image] = []
        seeds: list[int] = []
        for iteration in range(settings.n_iter):
            batch_seeds = [
                (seed + iteration * settings.batch_size + k) % (MAX_SEED + 1)
                for k in range(settings.batch_size)
            ]
            generators = _generators(batch_seeds)
            inputs = inputs_for(generators)
            outputs += self._call(
                conditioned, settings, context, steps, generators, inputs, strength=strength
            )
            seeds += batch_seeds
        return outputs, seeds

    def _call(
        self,
        conditioned: Conditioned,
        settings: Profile,
        context: CallContext,
        own_steps: tuple[CallStep, ...],
        generators: list[torch.Generator],
        inputs: dict[str, Any],
        *,
        strength: bool = True,
    ) -> list[Image.Image]:
        """One pipeline call, through the per-call steps: the prompts' first, then the
        engine's, then this job's own (`own_steps`)."""
        call: dict[str, Any] = dict(
            **inputs, num_images_per_prompt=context.per_prompt, generator=generators,
            **conditioned.guidance.call,
        )  # fmt: skip
        if strength:
            total, denoising = inference_steps(
                settings.steps, settings.denoising_strength, fix_steps=settings.img2img_fix_steps
            )
            call.update(num_inference_steps=total, strength=denoising)
        else:
            call.update(num_inference_steps=settings.steps)
        ordered = (conditioned.prompts, *self.steps, *own_steps)
        return run_call(conditioned.pipe, call, ordered, context)

    def _conditioning(
        self,
        settings: Profile,
        task: Pipeline,
        pixels: int,
        prompt: str,
        negative_prompt: str,
        notes: list[str],
    ) -> Conditioned:
        """The warm pipeline for `task`, set up for this job: its sampler, VAE tiling, the
        LoRAs and embeddings the prompts name, and the prompts' embeddings."""
        offload = settings.offload
        pipe = self.models.pipeline(settings.model, task, vae=settings.vae, offload=offload)
        pipe.scheduler = self.models.scheduler(settings.model, settings.sampler, vae=settings.vae)
        low_memory = self.models.low_memory(settings.model, vae=settings.vae)
        vae_tiling(pipe, pixels, low_memory=low_memory)
        # A1111: <lora:…> tags leave the prompt and load the LoRA; embeddings are used by
        # name; the prompts are then encoded with A1111's weighting and 75-token chunks.
        try:
            prompt_text, loras, ignored = extract_extra_networks(prompt)
            negative_text, negative_loras, _ = extract_extra_networks(negative_prompt)
        except ValueError as exc:
            raise InputError(f"the prompt has a malformed extra-network tag: {exc}") from exc
        notes += [f"ignored {tag}: only <lora:…> tags are supported" for tag in ignored]
        applied = self.models.adapters(settings.model, task, vae=settings.vae).apply(
            [*loras, *negative_loras], prompt_text, negative_text
        )
        notes += applied.notes
        a1111_order = second_order(settings.sampler)
        plan = plan_prompts(
            applied.prompt,
            applied.negative_prompt,
            timeline_steps(settings.steps, second_order=a1111_order),
        )
        notes += [f"prompt: {note}" for note in plan.notes]
        # What makes the text encoders' output: the LoRAs on them, the texts, the clip skip.
        loras_key = tuple((lora.adapter, lora.te_weight) for lora in applied.loras)
        cache = self.models.prompts(settings.model, vae=settings.vae)
        family = family_of(pipe)
        if not family.a1111_prompts:
            return family_conditioning(
                Conditioned(pipe, family, applied, PromptConditioning({}, None), NO_GUIDANCE),
                plan, settings, cache, loras_key, notes,
            )  # fmt: skip
        guidance = family.guide(
            pipe, cfg_scale=settings.cfg_scale, negative_prompt=applied.negative_prompt,
            distilled_cfg_scale=settings.distilled_cfg_scale,
        )  # fmt: skip
        if plan.plain:
            prompt_text, negative_text = plan.fixed_texts
            key = (loras_key, prompt_text, negative_text, settings.clip_skip)
            embeddings = cache.get(
                key,
                lambda: PromptEncoder(pipe).encode(
                    prompt_text, negative_text, clip_skip=settings.clip_skip
                ),
            )
            return Conditioned(
                pipe, family, applied, PromptConditioning(embeddings, None), guidance
            )
        # Prompt editing, alternation, AND: each distinct text is encoded once (and once a
        # clip, through the cache), the UNet is steered per model call.
        scheduled = _scheduled(
            plan,
            PromptEncoder(pipe),
            cache,
            (loras_key, settings.clip_skip),
            clip_skip=settings.clip_skip,
            # A1111 counts a second-order sampler's two model calls a step; diffusers' own
            # second-order schedulers call the model as often, a first-order stand-in half.
            counter_scale=(2 if a1111_order else 1) / pipe.scheduler.order,
            guidance=settings.cfg_scale,
        )
        prompts = PromptConditioning(scheduled.call_kwargs(), scheduled)
        return Conditioned(pipe, family, applied, prompts, guidance)

    def paint_batch(
        self,
        images: list[Image.Image],
        settings: Profile,
        *,
        width: int,
        height: int,
        seeds: list[int],
        prompt: str,
        negative_prompt: str,
    ) -> list[Painting]:
        """Paint several images that share every setting but their seed in one pipeline call,
        each with its own generator: what :meth:`paint` gives each alone, to within float
        rounding (the batch sums in another order). Plain img2img only (see
        :func:`batchable`)."""
        notes: list[str] = []
        whole = whole_mask(self.family(settings), width, height)
        conditioned = self._conditioning(
            settings, "img2img" if whole is None else "inpaint", width * height, prompt,
            negative_prompt, notes,
        )  # fmt: skip
        resized = [resize_image(image, settings.resize_mode, width, height) for image in images]
        context = CallContext(images=len(images), per_prompt=1)  # one prompt row per image
        inputs: dict[str, Any] = {"image": resized}
        if conditioned.family.flow:
            inputs.update(width=width, height=height)
        if whole is not None:
            inputs.update(mask_image=[whole] * len(images))
        painted = self._call(conditioned, settings, context, (), _generators(seeds), inputs)
        params = job_params(conditioned, settings)
        paintings = []
        for image, seed in zip(painted, seeds, strict=True):
            paintings.append(Painting([image], [seed], width, height, inpainted=False,
                                      notes=tuple(notes), params=params))  # fmt: skip
        return paintings

    def _init_image(
        self,
        pipe: Any,
        image: Image.Image,
        settings: Profile,
        width: int,
        height: int,
        generators: list[torch.Generator],
    ) -> Any:
        if settings.resize_mode is not ResizeMode.LATENT_UPSCALE:
            return image
        import torch.nn.functional as F

        # A1111 "Just resize (latent upscale)": encode at the image's own size, then
        # interpolate the latents bilinearly to the processing size.
        own = resize_image(image, ResizeMode.LATENT_UPSCALE, width, height)
        latents = encode_image(pipe, own, generators[0])
        factor = pipe.vae_scale_factor
        return F.interpolate(latents, size=(height // factor, width // factor), mode="bilinear")

    def _inpaint_inputs(
        self,
        pipe: Any,
        image: Image.Image,
        mask: Image.Image,
        settings: Profile,
        generators: list[torch.Generator],
    ) -> dict[str, Any]:
        inputs: dict[str, Any] = {"image": image, "mask_image": mask}
        if settings.inpainting_fill not in ("latent noise", "latent nothing"):
            return inputs
        import torch

        # A1111 replaces the masked latents before sampling: seeded noise or zeros. The
        # pipeline takes ready latents when given a 4-channel tensor.
        latents = encode_image(pipe, image, generators[0])
        keep = latent_mask(pipe, mask, latents)
        if settings.inpainting_fill == "latent noise":
            noise = torch.randn(latents.shape, generator=generators[0]).to(latents)
            latents = latents * keep + noise * (1 - keep)
        else:
            latents = latents * keep
        masked = Image.composite(
            Image.new("RGB", image.size), image, mask.point(lambda v: 255 * (v >= 128))
        )
        return {
            "image": latents,
            "mask_image": mask,
            "masked_image_latents": encode_image(pipe, masked, generators[0]),
        }


def _steps_run(family: Family, settings: Profile) -> int:
    """Sampling steps one pipeline call runs."""
    steps, strength = inference_steps(
        settings.steps, settings.denoising_strength, fix_steps=settings.img2img_fix_steps
    )
    return family.steps_run(steps, strength)


def _generators(seeds: list[int]) -> list[torch.Generator]:
    """CPU generators: the same seed gives the same image on any device."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def _scheduled(
    plan: PromptPlan,
    encoder: PromptEncoder,
    cache: PromptCache,
    key: tuple[Any, ...],
    *,
    clip_skip: int,
    counter_scale: float,
    guidance: float,
) -> ScheduledConditioning:
    """The plan's texts embedded, each once (`key`: what else makes an embedding)."""

    def embedded(text: str, *, negative: bool) -> Embedded:
        # An SDXL negative that is empty at every step is zeros (A1111's rule for "").
        zeros = negative and plan.negative_texts == ("",)
        # Spaces around a text give no tokens: " b" after an AND is "b" encoded again.
        text = text.strip()
        found = cache.get(
            (*key, "text", text, zeros),
            lambda: {"embedded": encoder.embed(text, clip_skip=clip_skip, negative=zeros)},
        )
        result: Embedded = found["embedded"]
        return result

    positive = {text: embedded(text, negative=False) for text in plan.texts}
    negative = {text: embedded(text, negative=True) for text in plan.negative_texts}
    lengths = {e.z.shape[1] for e in (*positive.values(), *negative.values())}
    # The empty chunk pads texts of different lengths; not encoded when they are alike.
    empty = None
    if len(lengths) > 1:
        empty = cache.get((*key, "empty"), lambda: {"z": encoder.empty(clip_skip=clip_skip)})["z"]
    return ScheduledConditioning(
        plan, positive, negative, empty=empty, counter_scale=counter_scale, guidance=guidance
    )


def batchable(settings: Profile, has_mask: bool) -> bool:
    """Whether requests with these settings can share a pipeline call: plain img2img (or a
    sketch laid on), one image per request, no latent upscale (it encodes per image)."""
    return (
        not has_mask
        and settings.n_iter == 1
        and settings.batch_size == 1
        and settings.resize_mode is not ResizeMode.LATENT_UPSCALE
    )
