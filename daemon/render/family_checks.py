"""What a profile asks that its model's family cannot do: said by ``check`` and at start-up,
before any file waits or fails for it.

Two grades. A *warning* is a setting the family ignores or replaces with the nearest it can
do, as the job's notes will also say (CLIP skip on T5, A1111 emphasis, a sampler that cannot
follow a flow schedule, latent fills). A *problem* is one no file of the profile can get
past (ControlNet on a transformer, prompt editing on T5): ``check`` fails on it.
"""

from __future__ import annotations

from daemon.a1111.prompt_plan import plan_prompts
from daemon.a1111.prompts import without_emphasis
from daemon.a1111.samplers import flow_sampler_note
from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import Profile
from daemon.config.settings import Settings
from daemon.errors import ConfigError
from daemon.families import Family
from daemon.models.model_family import is_edit_model, source_family
from daemon.models.resolve import ModelSource, Search, resolve_model
from daemon.tasks.registry import task_of

Finding = tuple[str, str]  # (profile key, what to say)


def profile_family(profile: Profile, settings: Settings) -> Family | None:
    """The family of the profile's model, without loading or building it (None: not known
    yet, e.g. a model that is missing, which is reported on its own)."""
    source = _source(profile, settings)
    return source_family(source) if source is not None else None


def edit_problems(profile: Profile, settings: Settings) -> list[Finding]:
    """An edit profile whose model cannot edit: every file of it would wait."""
    source = _source(profile, settings) if task_of(profile).pipeline == "edit" else None
    if source is None or is_edit_model(source) is not False:
        return []
    return [("model", f"{source.name} is not an instruction-edit model: the edit task needs "
                      "Flux Kontext (FLUX.1-Kontext-dev), Qwen-Image-Edit or Flux.2, as a "
                      "diffusers folder; its files would wait")]  # fmt: skip


def _source(profile: Profile, settings: Settings) -> ModelSource | None:
    try:
        return resolve_model(profile.model, Search.of(settings), build=False)
    except ConfigError:
        return None


def unsupported_features(settings: Profile, family: Family) -> list[str]:
    """What the settings use that the family's pipelines cannot take: the hooks on an SD
    UNet, and the initial noise where the family does not mix it as the others do."""
    wanted = {
        "ControlNet": bool(settings.enabled_units) and not family.unet_steps,
        "IP-Adapter": settings.ip_adapter is not None and not family.unet_steps,
        "temporal key_frame_attention": (
            settings.uses("key_frame_attention") and not family.unet_steps
        ),
        "temporal warped_noise": settings.uses("warped_noise") and not family.warped_noise,
    }
    return [name for name, used in wanted.items() if used]


def family_problems(profile: Profile, family: Family) -> list[Finding]:
    found: list[Finding] = []
    features = unsupported_features(profile, family)
    if features:
        found.append(("model", f"{family.name} cannot use {', '.join(features)} yet: its "
                               "files would wait; take them out of the profile, or use an "
                               "SD 1.x/2.x or SDXL model"))  # fmt: skip
    painted = task_of(profile).pipeline in ("img2img", "inpaint")
    if painted and family.img2img_as_inpaint and "inpaint" not in family.pipelines:
        found.append(("model", f"{family.name} has no img2img or inpaint pipeline in "
                               "diffusers: its files would wait; use it with task: "
                               "edit"))  # fmt: skip
    if not family.a1111_prompts:
        plan = plan_prompts(profile.prompt, profile.negative_prompt, profile.steps)
        if not plan.plain:
            found.append(("prompt", f"{family.name} cannot follow A1111's prompt editing, "
                                    "alternation or AND: every file would fail; write the "
                                    "prompts without them"))  # fmt: skip
    return found


def family_warnings(profile: Profile, family: Family) -> list[Finding]:
    found: list[Finding] = []
    if profile.clip_skip > 1 and not family.clip_skip:
        found.append(("clip_skip", f"{family.name} has no CLIP skip: its prompt goes through "
                                   "T5 or Qwen; ignored"))  # fmt: skip
    if not family.a1111_prompts:
        for key in ("prompt", "negative_prompt"):
            if without_emphasis(getattr(profile, key))[1]:
                found.append((key, f"{family.name} does not take A1111's emphasis: weights "
                                   "like (word:1.2) are ignored and the words kept"))  # fmt: skip
    if not family.latent_fill and profile.inpainting_fill in ("latent noise", "latent nothing"):
        found.append(("inpainting_fill", f"'{profile.inpainting_fill}' works on SD latents "
                                         f"only: {family.name} uses 'original'"))  # fmt: skip
    if not family.latent_fill and profile.resize_mode is ResizeMode.LATENT_UPSCALE:
        found.append(("resize_mode", f"latent upscale works on SD latents only: {family.name} "
                                     "uses just resize"))  # fmt: skip
    note = flow_sampler_note(profile.sampler, pipeline_passes_sigmas=family.sets_sigmas)
    if family.flow and note:
        found.append(("sampler_name", note))
    if profile.shift is not None and not family.flow:
        found.append(("shift", f"shift applies to flow-matching models; {family.name} "
                               "ignores it"))  # fmt: skip
    return found
