"""The ``edit`` task on diffusers: an instruction ("make it night", "remove the cup") applied
to the input by an instruction-edit model: Flux Kontext, Qwen-Image-Edit (Plus) or Flux.2.

The family says how its edit pipeline takes the input, a mask and further reference images
(:attr:`daemon.families.Family.edit_inputs`); the rest is the painting engine's: the warm
pipeline, LoRAs, the prompt (encoded ahead for Kontext; with the image, in the call, for
Qwen's vision-language encoder), guidance, seeds, batches and progress.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image

from daemon.a1111.imaging import resize_image
from daemon.a1111.masks import overlay_original, prepare_mask
from daemon.config.profiles import Profile
from daemon.engines.diffusion import Canvas, DiffusionEngine, Painting
from daemon.engines.family_prompts import fit_size, followable, job_params
from daemon.errors import ConfigError


class EditEngine(DiffusionEngine):
    """A painting engine that also edits by instruction."""

    def edit(
        self,
        canvas: Canvas,
        settings: Profile,
        *,
        width: int,
        height: int,
        seed: int,
        prompt: str,
        negative_prompt: str,
        references: Sequence[Image.Image] = (),
        on_step: Callable[[int, int], None] | None = None,
    ) -> Painting:
        """The edit task: `prompt` is an instruction to the model's edit pipeline (Flux
        Kontext, Qwen-Image-Edit), which starts from noise with the input as its condition.

        The result has the job's processing size (whatever size the pipeline painted at). A
        mask restricts the edit: the pipeline's inpaint variant repaints the masked part at
        ``denoising_strength``, and the original is laid back outside it, as for inpaint."""
        notes: list[str] = []
        family = self.family(settings)
        if family.edit_inputs is None:
            raise ConfigError(
                f"model {settings.model} is {family.name}, which has no instruction-edit "
                "model: the edit task needs Flux Kontext, Qwen-Image-Edit or Flux.2"
            )
        width, height = fit_size(family, width, height, notes)
        settings = followable(family, settings, notes)
        image = resize_image(canvas.image, settings.resize_mode, width, height)
        mask = overlay_mask = None
        if canvas.mask is not None:
            if settings.inpaint_full_res:
                notes.append(
                    "'only masked' does not apply to edit: the model saw the whole picture"
                )
            blurred = prepare_mask(
                canvas.mask, invert=settings.inpainting_mask_invert, blur=settings.mask_blur
            )
            mask = resize_image(blurred, settings.resize_mode, width, height)
            overlay_mask = mask.point(lambda v: min(255, v * 2))
        conditioned = self._conditioning(
            settings, "edit" if mask is None else "edit_inpaint", width * height, prompt,
            negative_prompt, notes,
        )  # fmt: skip
        inputs, skipped = family.edit_inputs(
            conditioned.pipe, image, mask, list(references), (width, height)
        )
        notes += skipped
        images, seeds = self._sample(
            conditioned, settings, lambda _: inputs, seed=seed, on_step=on_step,
            strength=mask is not None,
        )  # fmt: skip
        if images and images[0].size != (width, height):
            notes.append(f"the model painted {images[0].size[0]}x{images[0].size[1]}: "
                         f"resized to {width}x{height}")  # fmt: skip
            images = [result.resize((width, height), Image.Resampling.LANCZOS) for result in images]
        if mask is not None and overlay_mask is not None:
            images = [overlay_original(result, image, overlay_mask) for result in images]
        # Without a mask the edit starts from noise: no denoising strength applies.
        unused = {"Denoising strength": None} if mask is None else {}
        return Painting(
            images, seeds, width, height, inpainted=mask is not None, notes=tuple(notes),
            params={**job_params(conditioned, settings), **unused},
        )  # fmt: skip
