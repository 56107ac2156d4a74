"""A1111's parameter text for a painted image: enough to reproduce it, in A1111's key names."""

from __future__ import annotations

from dataclasses import dataclass

from daemon import __version__
from daemon.a1111.infotext import format_infotext
from daemon.a1111.samplers import infotext_fields
from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import Profile
from daemon.engines.diffusion import Painting
from daemon.temporal.infotext import temporal_params

MASK_MODES = {False: "Inpaint masked", True: "Inpaint not masked"}


@dataclass(frozen=True)
class ModelFields:
    """What the parameter text says of the model."""

    name: str
    hash: str | None
    vae: tuple[str, str | None] | None = None  # its file name and hash
    modules: tuple[str, ...] = ()  # Forge's Module 1..n: a single file's separate parts


def infotext(settings: Profile, painting: Painting, index: int, *, model: ModelFields) -> str:
    """The parameters of image `index` of `painting`, as A1111 writes them."""
    params = infotext_params(settings, painting, painting.seeds[index], index, model=model)
    return format_infotext(settings.prompt, settings.negative_prompt, params)


def infotext_params(
    settings: Profile, painting: Painting, seed: int, index: int, *, model: ModelFields
) -> dict[str, object]:
    """A1111's parameter line for one image, in its key names."""
    params: dict[str, object] = {"Steps": settings.steps}
    params.update(infotext_fields(settings.sampler))
    params.update({
        "CFG scale": settings.cfg_scale,
        "Seed": seed,
        "Size": f"{painting.width}x{painting.height}",
        "Model hash": model.hash,
        "Model": model.name,
        "VAE hash": model.vae[1] if model.vae else None,
        "VAE": model.vae[0] if model.vae else None,
        "Denoising strength": settings.denoising_strength,
        "Clip skip": settings.clip_skip,
    })  # fmt: skip
    params.update(painting.params)  # Lora hashes, TI hashes
    params.update(temporal_params(settings, settings.enabled_units))
    if painting.inpainted:
        params.update({
            "Mask blur": settings.mask_blur,
            "Mask mode": MASK_MODES[settings.inpainting_mask_invert],
            "Inpaint area": "Only masked" if settings.inpaint_full_res else "Whole picture",
            "Masked area padding": settings.inpaint_full_res_padding,
            "Masked content": settings.inpainting_fill,
        })  # fmt: skip
    if settings.batch_size > 1:
        params.update({"Batch size": settings.batch_size, "Batch pos": index % settings.batch_size})
    if settings.resize_mode is not ResizeMode.JUST_RESIZE:
        params["Resize mode"] = settings.resize_mode.value.capitalize()
    if settings.img2img_fix_steps:
        params["Img2img fix steps"] = True
    params["Version"] = f"img2imgd v{__version__}"
    # Forge's names for the separate text-encoder and VAE files a single file is painted with
    params.update({f"Module {i}": name for i, name in enumerate(model.modules, 1)})
    return params
