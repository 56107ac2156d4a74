"""What a model family is, as the rest of the daemon asks it: one value per family.

A family is the set of diffusers pipelines one kind of model runs in (SD 1.x/2.x, SDXL,
SD 3.5, Flux.1, Flux.2, Qwen-Image), and the facts that differ between them: which pipeline class
does each task, the size rule, how the prompt becomes embeddings, which guidance knob
``cfg_scale`` turns, and which A1111 features the family cannot follow. Each family is one
module beside this one; nothing else in the daemon branches on a family's name.

Pure data and small functions. A family's prompt encoder receives the loaded pipeline and
calls its own ``encode_prompt``, so nothing here imports torch or diffusers at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Guidance:
    """How one job's guidance settings enter a pipeline call, and its infotext."""

    call: Mapping[str, Any]  # the pipeline call's guidance kwargs
    infotext: Mapping[str, object]  # as Forge writes them ("CFG scale", "Distilled CFG Scale")
    negative: str | None  # the negative prompt to encode, or None: no negative is used


Guide = Callable[..., Guidance]
"""``guide(pipe, *, cfg_scale, distilled_cfg_scale, negative_prompt) -> Guidance``."""

EditInputs = Callable[..., tuple[dict[str, Any], list[str]]]
"""``edit_inputs(pipe, image, mask, references, size) -> (call kwargs, notes)``: how the
family's edit pipeline takes the input, its mask (None: the whole picture) and the further
reference images, painting at ``size``; notes say what it could not take."""

Encode = Callable[..., dict[str, Any]]
"""``encode(pipe, prompt, negative, *, clip_skip) -> {pipeline kwarg: tensor}``: the prompt
(and the negative, unless None) as the embeddings the family's pipelines take, one row each."""


@dataclass(frozen=True)
class Family:
    """One model family. ``classes`` are the diffusers pipeline class names (in a folder's
    ``model_index.json``, or a loaded pipeline's type) that belong to it."""

    name: str  # as the README's table and `check` say it
    classes: frozenset[str]
    pipelines: Mapping[str, str]  # task (a Pipeline) → the diffusers class that runs it
    guide: Guide
    encode: Encode | None = None  # None: A1111's own encoder (engines/prompt_encoder.py)
    edit_inputs: EditInputs | None = None  # None: no instruction-edit model in the family
    size_multiple: int = 8  # width and height are multiples of this
    flow: bool = False  # a flow-matching (rectified flow) schedule, not an epsilon one
    # The pipeline sets the scheduler's sigmas (and μ from the image size) on every call,
    # which FlowMatchHeun cannot take: Flux's and Qwen's do, SD 3.5's does not.
    sets_sigmas: bool = True
    clip_skip: bool = True  # whether A1111's "Clip skip" means anything to its encoders
    latent_fill: bool = True  # inpainting fill "latent noise"/"latent nothing", latent upscale
    unet_steps: bool = True  # ControlNet, IP-Adapter, reference, key-frame attention: UNet hooks
    # temporal warped_noise: the initial noise taken over where the pipeline mixes it
    # (add_noise, or scale_noise with SD 3.5's, Flux's and Qwen's latent layouts)
    warped_noise: bool = True
    max_sequence_length: int = 512  # the T5 / Qwen token budget (unused by CLIP-only families)
    # No img2img pipeline (Flux.2): img2img runs as its inpaint pipeline with a mask that
    # covers the whole picture, at the job's denoising strength.
    img2img_as_inpaint: bool = False
    notes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def a1111_prompts(self) -> bool:
        """A1111's emphasis ``(word:1.2)``, prompt editing, alternation, ``AND`` and
        embeddings: done by the daemon's own CLIP encoder, which only the SD families use."""
        return self.encode is None

    def fit_size(self, width: int, height: int) -> tuple[int, int]:
        """The largest size of the family's multiple within (width, height) (at least one)."""
        step = self.size_multiple
        return max(step, width // step * step), max(step, height // step * step)

    def steps_run(self, num_inference_steps: int, strength: float) -> int:
        """Sampling steps a diffusers img2img call runs: SD truncates ``N·s``; the flow
        pipelines start at ``int(N − N·s)`` and so round the other way (N=28, s=0.6: 16 vs 17)."""
        n = num_inference_steps
        if self.flow:
            return n - int(max(n - n * strength, 0))
        return min(int(n * strength), n)


def frozen(**values: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))
