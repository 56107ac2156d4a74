"""The render function: requests and the warm model cache in, results out.

It opens no inbox or outbox file, writes nothing of the job's, touches no journal and makes
no decision that depends on the time: the daemon decided everything on its side (*prepare*)
and writes everything on its side (*deliver*). What it does use is the warm model cache,
whose own caches (built-in models, file hashes, label embeddings) live in the state folder of
the machine that renders.

Running out of memory (a CPU ``MemoryError`` or the GPU's out-of-memory error, while loading
a model, a VAE, a LoRA or while painting) is retried at once: a flow model on a GPU first
with its weights offloaded further (daemon/render/offload.py), then once with the model in
low-memory mode; if that fails too, the request fails with a TransientError and the daemon
defers its input. Every other error is raised as it is, for :func:`daemon.errors.classify`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TypeVar

from loguru import logger
from PIL import Image

from daemon.a1111.alpha import result_alpha
from daemon.a1111.color import apply_color_correction
from daemon.a1111.pnginfo import model_note
from daemon.config.profiles import Profile
from daemon.controlnet.modules import module_named
from daemon.controlnet.reference import is_reference
from daemon.engines.call_steps import CallStep
from daemon.engines.controlnet_step import (
    ControlNetStep,
    ReadyUnit,
    architecture,
    infotext_params,
    ready_units,
)
from daemon.engines.diffusion import Canvas, DiffusionEngine, Painting, batchable
from daemon.engines.edit import EditEngine
from daemon.engines.ip_adapter_step import IPAdapterStep, infotext_entry
from daemon.engines.reference_step import ReferenceStep
from daemon.engines.temporal_steps import CrossFrameStep, InitialNoise
from daemon.errors import ConfigError, Superseded, TransientError, is_out_of_memory
from daemon.families import Family
from daemon.render.cache import ModelCache
from daemon.render.family_checks import unsupported_features
from daemon.render.offload import NAMES
from daemon.render.parameters import ModelFields, infotext
from daemon.render.values import RenderRequest, RenderResult, TemporalInputs
from daemon.tasks.keys import PROMPT_SOURCES
from daemon.tasks.registry import task_of
from daemon.temporal.keys import PARTS

_T = TypeVar("_T")


def render(
    request: RenderRequest, models: ModelCache, stop: Callable[[], bool] | None = None
) -> RenderResult:
    """Render one request with the models in `models` (loading what is missing). `stop` is
    asked at every step; True stops the painting with :class:`Superseded`."""
    settings = request.settings
    kind = settings.interrogating
    if kind is not None:
        found = with_low_memory_retry(
            models,
            request.label,
            settings,
            lambda: models.interrogators.interrogate(
                request.image, settings, kind, settings.interrogation_model(kind)
            ),
        )
        return RenderResult(settings, interrogation=found, notes=request.notes)
    return with_low_memory_retry(
        models, request.label, request.settings, partial(_paint, request, models, stop)
    )


def warm(settings: Profile, models: ModelCache) -> None:
    """Load what `settings` render with. A model that cannot be loaded is only logged here:
    the job that needs it reports it, with the input's name."""

    task = task_of(settings)

    def load() -> None:
        kind = settings.interrogating
        if kind is not None:
            models.interrogators.warm(kind, settings.interrogation_model(kind))
        elif task.pipeline is not None:
            offload = settings.offload
            models.pipeline(settings.model, task.pipeline, vae=settings.vae, offload=offload)

    try:
        with_low_memory_retry(models, f"loading {settings.model}", settings, load)
    except Exception as exc:  # the job will say it; warming is only a head start
        logger.debug("could not load {} ahead of its jobs: {}", settings.model, exc)


def with_low_memory_retry(
    models: ModelCache, label: str, settings: Profile, attempt: Callable[[], _T]
) -> _T:
    """`attempt()`; out of memory → a flow model on a GPU again at once with its weights
    offloaded one step further (model, then sequential CPU offload); then, or for any other
    model, once more in low-memory mode; out of memory again → TransientError."""
    low_memory_tried = False
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _empty_cuda_cache()
            further = models.offload_further(settings.model, vae=settings.vae)
            if further is not None:
                logger.warning(
                    "{}: out of memory; loading the model again with {} (slower, far less GPU "
                    "memory), kept for this model until a restart",
                    label, NAMES[further],
                )  # fmt: skip
                continue
            if low_memory_tried:
                raise TransientError(
                    "out of memory even with low-memory settings; lower max_pixels or "
                    "batch_size, or free memory on the GPU or machine"
                ) from exc
        low_memory_tried = True
        logger.warning(
            "{}: out of memory; retrying once with attention slicing and VAE tiling (slower, "
            "much less memory), kept on for this model",
            label,
        )
        models.use_low_memory(settings.model, vae=settings.vae)
        models.interrogators.unload_all()


def _paint(
    request: RenderRequest, models: ModelCache, stop: Callable[[], bool] | None = None
) -> RenderResult:
    settings = fill_prompt_sources(request, models)
    width, height = request.size

    def at_step(_done: int, _total: int) -> None:
        if stop is not None and stop():
            raise Superseded(f"{request.label}: stopped for a newer version")

    _refuse_unsupported(settings, DiffusionEngine(models).family(settings))
    units = _ready_units(request, settings, models)
    steps: list[CallStep] = [ControlNetStep(units), ReferenceStep(units)] if units else []
    ip_adapter = _ip_adapter_step(request, settings, models)
    if ip_adapter is not None:
        steps.append(ip_adapter)
    temporal = request.temporal
    noise = _initial_noise(temporal)
    steps += [*_cross_frame(request), *([noise] if noise is not None else [])]
    init = temporal.init if temporal is not None and temporal.init is not None else request.image
    canvas, on_step = Canvas(init, request.mask), at_step if stop is not None else None
    if task_of(settings).pipeline == "edit":
        painting = EditEngine(models, steps=steps).edit(
            canvas, settings, width=width, height=height, seed=request.seed,
            prompt=settings.prompt, negative_prompt=settings.negative_prompt,
            references=request.references, on_step=on_step,
        )  # fmt: skip
    else:
        painting = DiffusionEngine(models, steps=steps).paint(
            canvas, settings, width=width, height=height, seed=request.seed,
            prompt=settings.prompt, negative_prompt=settings.negative_prompt,
            correct=_correction(request) if request.mask is not None else None, on_step=on_step,
        )  # fmt: skip
    painted, controls = _with_units(painting, units, settings)
    if ip_adapter is not None:
        entry = infotext_entry(ip_adapter.adapter, ip_adapter.scale, len(units))
        painted = replace(painted, params={**painted.params, **entry})
    result = _result(request, settings, painted, controls, model=_ModelInfo.of(settings, models))
    return _with_noise(result, noise)


def _refuse_unsupported(settings: Profile, family: Family) -> None:
    features = unsupported_features(settings, family)
    if features:
        raise ConfigError(
            f"model {settings.model} is {family.name}, which {', '.join(features)} cannot "
            "work with yet: take them out of the profile, or use an SD 1.x/2.x or SDXL model"
        )


def _cross_frame(request: RenderRequest) -> list[CallStep]:
    """key_frame_attention: the frame's self-attention also attends to the key frame's
    and the previous frame's results (none on the clip's first frame: painted as without)."""
    temporal, settings = request.temporal, request.settings
    if temporal is None or not temporal.attend_to:
        return []
    options = settings.key_frame_attention
    return [CrossFrameStep(temporal.attend_to, parts=PARTS[options.blocks],
                           strength=options.strength)]  # fmt: skip


def _initial_noise(temporal: TemporalInputs | None) -> InitialNoise | None:
    """warped_noise: the frame's initial noise given (warped from the previous frame's),
    or drawn as without it (the clip's first frame, a cut); recorded for the next frame."""
    if temporal is None or not (temporal.record_noise or temporal.noise is not None):
        return None
    return InitialNoise([temporal.noise], record=temporal.record_noise)


def _with_noise(result: RenderResult, step: InitialNoise | None) -> RenderResult:
    if step is None or not step.recorded:
        return result
    return replace(result, noise=step.recorded[0])


def _ready_units(request: RenderRequest, settings: Profile, models: ModelCache) -> list[ReadyUnit]:
    """ControlNet units: each with its own control image, or the input, as the extension's."""
    if not settings.enabled_units:
        return []
    unet = models.pipeline(settings.model, "img2img", vae=settings.vae).unet
    return ready_units(
        settings, request.image, request.size, models.controlnets,
        unet_width=unet.config.cross_attention_dim, controls=request.controls,
        annotators=models.annotators, mask=request.mask,
    )  # fmt: skip


def _with_units(
    painting: Painting, units: Sequence[ReadyUnit], settings: Profile
) -> tuple[Painting, tuple[Image.Image, ...]]:
    """The painting with its units' infotext entries, and the control images to save."""
    if not units:
        return painting, ()
    painting = replace(painting, params={**painting.params, **infotext_params(units)})
    saved = tuple(Image.fromarray(r.picture) for r in units) if settings.save_control else ()
    return painting, saved


def _ip_adapter_step(
    request: RenderRequest, settings: Profile, models: ModelCache
) -> IPAdapterStep | None:
    """The IP-Adapter step of a request with ``ip_adapter``: its reference encoded once
    (per image content, for every frame of a clip)."""
    adapter = settings.ip_adapter
    if adapter is None or request.reference is None:
        return None
    loaded = models.ip_adapters.get(adapter.model, adapter.image_encoder)
    unet = models.pipeline(settings.model, "img2img", vae=settings.vae).unet
    if loaded.width != unet.config.cross_attention_dim:
        raise ConfigError(
            f"IP-Adapter {adapter.model} is for {architecture(loaded.width)}, but model "
            f"{settings.model} is {architecture(unet.config.cross_attention_dim)}: use an "
            "IP-Adapter made for it"
        )
    return IPAdapterStep(
        loaded, models.ip_adapters.embedding(loaded, request.reference), adapter.scale
    )


def share_a_call(first: RenderRequest, other: RenderRequest) -> bool:
    """Whether two requests differ only in their input image, seed and colour reference, so
    that one pipeline call can paint both (see :meth:`DiffusionEngine.paint_batch`)."""
    return (
        first.settings == other.settings
        and first.size == other.size
        and first.mask is None
        and other.mask is None
        and not first.settings.prompt_sources
        and first.parameters_model_hash == other.parameters_model_hash
        and not (first.alone or other.alone)  # so that a newer version can stop it
        and first.temporal is None  # painted in order: each takes the one before it
        and other.temporal is None
        and task_of(first.settings).pipeline in ("img2img", "inpaint")  # painted, not edited
        and not _has_reference_unit(first.settings)  # its step paints one image a call
        and first.settings.ip_adapter is None  # its reference is per input: one call each
        and batchable(first.settings, has_mask=False)
    )


def _has_reference_unit(settings: Profile) -> bool:
    return any(is_reference(module_named(u.module).name) for u in settings.enabled_units)


def render_batch(requests: Sequence[RenderRequest], models: ModelCache) -> list[RenderResult]:
    """Requests that all :func:`share_a_call` with the first, in one pipeline call. Out of
    memory is raised as it is: the executor tries a smaller batch first."""
    first = requests[0]
    settings = first.settings
    width, height = first.size
    # The same units for every request, each with its own control images (stacked by the step).
    units = [_ready_units(request, settings, models) for request in requests]
    steps = [ControlNetStep.batched(units)] if units[0] else []
    paintings = DiffusionEngine(models, steps=steps).paint_batch(
        [request.image for request in requests], settings, width=width, height=height,
        seeds=[request.seed for request in requests], prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
    )  # fmt: skip
    model = _ModelInfo.of(settings, models)
    return [
        _result(request, settings, *_with_units(painting, own, settings), model=model)
        for request, painting, own in zip(requests, paintings, units, strict=True)
    ]


def _correction(request: RenderRequest) -> Callable[[Image.Image], Image.Image] | None:
    """An inpainting's colour correction, which comes before the original is laid back
    over the unmasked part; any other painting's is left to deliver (:func:`_result`)."""
    if request.colors is None:
        return None
    return partial(apply_color_correction, request.colors)


class _ModelInfo(ModelFields):
    """What the parameter text says of the model: found and hashed once per call."""

    @classmethod
    def of(cls, settings: Profile, models: ModelCache) -> _ModelInfo:
        source = models.source(settings.model)
        return cls(
            source.name, models.model_hash(source), models.vae_info(settings.vae),
            models.modules(source),
        )  # fmt: skip


def _result(
    request: RenderRequest,
    settings: Profile,
    painting: Painting,
    controls: tuple[Image.Image, ...] = (),
    *,
    model: _ModelInfo,
) -> RenderResult:
    """The painting with A1111's parameters, and what the user should know about it."""
    mismatch = model_note(request.parameters_model_hash, model.hash, model.name)
    texts = [
        infotext(settings, painting, index, model=model) for index in range(len(painting.images))
    ]
    return RenderResult(
        request.settings,
        images=tuple(painting.images),
        infotexts=tuple(texts),
        controls=controls,
        seeds=tuple(painting.seeds),
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        notes=(*request.notes, *([mismatch] if mismatch else []), *painting.notes),
        colors=request.colors if request.mask is None else None,
        alpha=_alpha(request, settings, painting),
    )


def _alpha(request: RenderRequest, settings: Profile, painting: Painting) -> Image.Image | None:
    """The input's alpha resized as the input was painted (keep_alpha), or None."""
    if request.alpha is None or not painting.images:
        return None
    return result_alpha(request.alpha, settings.resize_mode, painting.images[0].size)


def fill_prompt_sources(request: RenderRequest, models: ModelCache) -> Profile:
    """{interrogate} and {tags} in the prompts, replaced by what the input shows."""
    settings = request.settings
    if not settings.prompt_sources:
        return settings
    image: Image.Image = request.prompt_image or request.image
    found: dict[str, str] = {}
    for kind in settings.prompt_sources:
        ref = settings.interrogation_model(kind)
        found[kind] = models.interrogators.interrogate(image, settings, kind, ref).line
        logger.info("{}: {} interrogation: {}", request.label, kind, found[kind])
    if models.device[0] != "cpu":
        # As A1111 (interrogate_keep_models_in_memory off): BLIP, CLIP or the tagger
        # would take GPU memory the painting needs. On a CPU they stay warm.
        models.interrogators.unload_all()

    def fill(text: str) -> str:
        for mark, kind in PROMPT_SOURCES.items():
            text = text.replace(mark, found.get(kind, mark))
        return text

    update = {"prompt": fill(settings.prompt), "negative_prompt": fill(settings.negative_prompt)}
    return settings.model_copy(update=update)


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
