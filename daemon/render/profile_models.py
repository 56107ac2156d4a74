"""The models a profile names, each with the resolver call that finds it: one walk, used by
the preflight (:mod:`daemon.render.availability`: is it there?) and by ``check`` / ``pull``
(:mod:`daemon.render.hub_refs`: which are hub ids, and are they cached?).

A profile names the checkpoint (or diffusers folder, or hub id), a VAE, the interrogators its
prompt asks for (or its task uses), the label lists CLIP ranks with, and LoRAs in its own
prompt. Each is looked up as the render side resolves it, but without loading, generating or
downloading anything (``build=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.a1111.prompts import extract_extra_networks
from daemon.config.profiles import Profile
from daemon.config.settings import Settings
from daemon.controlnet.annotators import annotator_of, check_annotator
from daemon.controlnet.ip_adapter_keys import IPAdapterSettings
from daemon.controlnet.modules import module_named
from daemon.engines.labels import load_label_lists
from daemon.models.builtin import is_builtin
from daemon.models.controlnet_layout import controlnet_layout
from daemon.models.flow_files import FlowFile, detect_file
from daemon.models.flow_loading import require_flow_parts
from daemon.models.hub_cache import HubRole
from daemon.models.resolve import (
    ModelNotFound,
    Search,
    find,
    resolve_clip,
    resolve_controlnet,
    resolve_image_encoder,
    resolve_ip_adapter,
    resolve_model,
    resolve_tagger,
    resolve_vae,
)


@dataclass(frozen=True)
class NamedModel:
    """One model a profile names."""

    key: str  # the profile key that names it (for file:line in messages)
    what: str  # for messages: model, vae, interrogation model, tagger, LoRA, label lists
    ref: str  # the reference as written
    find: Callable[[], object]  # the resolver call: a path, or the ref itself for a hub id;
    # raises ConfigError when it is nowhere
    role: HubRole | None = None  # what a hub id must be, when the reference may be one


def named_models(profile: Profile, settings: Settings) -> list[NamedModel]:
    """Every model `profile` renders with, in the order a job loads them."""
    search = Search.of(settings)
    named: list[NamedModel] = []
    kinds = set(profile.prompt_sources)
    if profile.interrogating is not None:  # `model` is the interrogation model
        kinds.add(profile.interrogating)
    else:
        model = profile.model

        def diffusion_model() -> str:
            source = resolve_model(model, search, build=False)
            if source.kind == "single_file":
                found = detect_file(Path(source.location))  # reads the key layout only
                if isinstance(found, FlowFile):  # its text encoders, VAE and tokenizer
                    given = Path(profile.vae) if profile.vae else None  # (found on its own)
                    require_flow_parts(Path(source.location), found, search, vae=given)
            return source.location

        named.append(NamedModel("model", "model", model, diffusion_model, "pipeline"))
        if profile.vae is not None:
            vae = profile.vae

            def vae_file() -> Path:
                return resolve_vae(vae, search, build=False)

            named.append(NamedModel("vae", "vae", vae, vae_file, "model"))
        named += [_lora(name, search, settings) for name in _profile_loras(profile)]
        named += [
            _controlnet(unit.model, search) for unit in profile.enabled_units if unit.needs_model
        ]
        named += _annotators(profile, settings)
        if profile.ip_adapter is not None:
            named.append(_ip_adapter(profile.ip_adapter, search))
    if "clip" in kinds:
        clip = profile.interrogation_model("clip")
        labels_dir = Path(profile.labels_dir).expanduser() if profile.labels_dir else None

        def clip_parts() -> tuple[str, str]:
            return resolve_clip(clip, search, build=False)

        def label_lists() -> object:
            return load_label_lists(labels_dir, skip_categories=profile.skip_categories)

        named.append(
            NamedModel(profile.model_key("clip"), "interrogation model", clip, clip_parts, "model")
        )
        named.append(NamedModel("labels_dir", "label lists", str(labels_dir or ""), label_lists))
    if "deepbooru" in kinds:
        tagger = profile.interrogation_model("deepbooru")

        def tagger_file() -> Path:
            return resolve_tagger(tagger, search, build=False)

        named.append(NamedModel(profile.model_key("deepbooru"), "tagger", tagger, tagger_file,
                                "tagger"))  # fmt: skip
    return named


def _profile_loras(profile: Profile) -> list[str]:
    """The LoRAs the profile's own prompts name. A LoRA named only in an input's settings or
    parameters is skipped with a note when missing, as A1111 does; one the profile promises
    for every job makes its files wait instead."""
    names: list[str] = []
    for text in (profile.prompt, profile.negative_prompt):
        try:
            names += [lora.name for lora in extract_extra_networks(text)[1]]
        except ValueError:
            continue  # a malformed tag: the job reports it, with the input's name
    return list(dict.fromkeys(names))


def _lora(name: str, search: Search, settings: Settings) -> NamedModel:
    def lookup() -> Path:
        try:
            return find("lora", name, search, dirs=settings.lora_dirs or None)
        except ModelNotFound as exc:
            raise exc.noted("named in the profile's prompt") from exc

    return NamedModel("prompt", "LoRA", name, lookup)


def _controlnet(ref: str, search: Search) -> NamedModel:
    def folder() -> Path:
        found = resolve_controlnet(ref, search, build=False)
        if found.is_file():
            controlnet_layout(found)  # reads the key layout only: is it a ControlNet?
        return found

    return NamedModel("controlnet", "ControlNet", ref, folder)


def _annotators(profile: Profile, settings: Settings) -> list[NamedModel]:
    """The annotator files the enabled units' preprocessors need, each file set once (hed
    and hed_safe share one), named by the first module that needs it."""
    needing: dict[object, str] = {}
    for unit in profile.enabled_units:
        module = module_named(unit.module).name
        annotator = annotator_of(module)
        if annotator is not None:
            needing.setdefault(annotator, module)
    models_dir = settings.models_dir

    def entry(module: str) -> NamedModel:
        def folder() -> Path:
            return check_annotator(module, models_dir)

        return NamedModel("controlnet", "annotator", module, folder)

    return [entry(module) for module in needing.values()]


def _ip_adapter(adapter: IPAdapterSettings, search: Search) -> NamedModel:
    def files() -> tuple[Path, Path | None]:
        file = resolve_ip_adapter(adapter.model, search, build=False)
        if is_builtin(adapter.model) and adapter.image_encoder is None:
            return file, None  # its own encoder, made with it
        return file, resolve_image_encoder(adapter.image_encoder, file, search)

    return NamedModel("ip_adapter", "IP-Adapter", adapter.model, files)
