"""The warm model cache: loaded pipelines, schedulers, LoRA/embedding state and interrogators.

Everything a render needs that is expensive to make lives here, loaded on first use and kept
until it has been idle for ``unload_after``: the img2img pipeline of each model (and VAE);
its inpaint pipeline, made with ``from_pipe`` so that it shares the same modules and never
reloads weights; one scheduler per sampler; the LoRAs and embeddings loaded into the model;
and the interrogation models. The cache belongs to whoever renders (the worker thread today,
a worker process or machine later); nothing in it knows about inboxes, outboxes or jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.a1111.samplers import SamplerChoice, build_scheduler
from daemon.config.settings import Settings
from daemon.engines.adapters import AdapterManager, AdapterState
from daemon.engines.annotator_models import Annotators
from daemon.engines.controlnet_models import ControlNets
from daemon.engines.interrogators import Interrogators
from daemon.engines.ip_adapters import IPAdapters
from daemon.engines.prompt_cache import PromptCache
from daemon.errors import ConfigError, TransientError, is_out_of_memory
from daemon.families import family_of, family_of_class
from daemon.models.builtin import BUILTIN_PREFIX
from daemon.models.flow_loading import file_modules, load_file_pipeline
from daemon.models.folder_pipeline import edit_class_name, edit_pipeline, load_folder_pipeline
from daemon.models.hashes import HashCache
from daemon.models.hub_cache import HubRef
from daemon.models.model_family import source_family
from daemon.models.resolve import ModelSource, Search, kind_folders, resolve_model, resolve_vae
from daemon.models.single_file import load_vae
from daemon.paths import shown
from daemon.render.device import flow_dtype, pick_device
from daemon.render.memory import release_memory
from daemon.render.offload import NAMES, Mode, place, place_derived, placement_for, stronger
from daemon.tasks.keys import Offload
from daemon.tasks.task import Pipeline

if TYPE_CHECKING:
    import torch


@dataclass
class _Loaded:
    source: ModelSource
    pipelines: dict[Pipeline, Any]
    scheduler_config: Any  # the model's own, before any sampler replaced it
    schedulers: dict[SamplerChoice, Any] = field(default_factory=dict)
    adapters: AdapterState = field(default_factory=AdapterState)  # shared by both pipelines
    prompts: PromptCache = field(default_factory=PromptCache)  # both share the text encoders
    last_used: float = 0.0
    offload: Offload = "auto"  # as asked when it loaded (a later profile's other value waits)
    placement: Mode = "none"
    told: set[Offload] = field(default_factory=set)  # other values already warned about


class ModelCache:
    """Loaded models by reference. Used by the thread that renders."""

    def __init__(
        self,
        *,
        models_dir: Path | None,
        state_dir: Path,
        device: str = "auto",
        lora_dirs: list[Path] | None = None,
        embedding_dirs: list[Path] | None = None,
        allow_pickle: bool = False,
        compile_unet: bool = False,
        download_models: bool = False,
        on_load: Callable[[str, float], None] = lambda name, seconds: None,
        controlnet_configs: Mapping[str, Path] | None = None,
        offload: Offload = "auto",
    ) -> None:
        self.compile_unet = compile_unet
        self.offload = offload  # the daemon's; a profile's own wins when it loads the model
        self.search = Search(
            models_dir, state_dir, allow_pickle=allow_pickle, download=download_models
        )
        self.lora_dirs = lora_dirs if lora_dirs is not None else kind_folders("lora", models_dir)
        self.embedding_dirs = (
            embedding_dirs if embedding_dirs is not None else kind_folders("embedding", models_dir)
        )
        self.state_dir = state_dir  # also holds the cache's own files (hashes, model configs)
        self.requested_device = device
        self.hashes = HashCache(state_dir / "hashes.json")
        self._loaded: dict[str, _Loaded] = {}
        self._low_memory: set[str] = set()  # models that ran out of memory once
        self._placed: dict[str, Mode] = {}  # flow models' placement at their last load
        self._forced: dict[str, Mode] = {}  # offload chosen after running out of memory
        self._device: tuple[str, torch.dtype] | None = None
        self.on_load = on_load  # a model loaded in so many seconds (the metrics)
        self.interrogators = Interrogators(
            self.search,
            label_cache=state_dir / "label-embeddings",
            device=lambda: self.device,
            on_load=on_load,
        )
        self.controlnets = ControlNets(self.search, device=lambda: self.device, on_load=on_load)
        self.annotators = Annotators(models_dir, device=lambda: self.device[0], on_load=on_load)
        if controlnet_configs is not None:  # single files' configs other than the shipped
            self.controlnets.configs = controlnet_configs
        self.ip_adapters = IPAdapters(self.search, device=lambda: self.device, on_load=on_load)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        device: str | None = None,
        on_load: Callable[[str, float], None] = lambda name, seconds: None,
    ) -> ModelCache:
        """The cache the daemon's settings describe (`device`: another than theirs)."""
        return cls(
            models_dir=settings.models_dir,
            state_dir=settings.state_dir,
            device=device or settings.device,
            lora_dirs=settings.lora_dirs,
            embedding_dirs=settings.embedding_dirs,
            allow_pickle=settings.allow_pickle,
            compile_unet=settings.compile_unet,
            download_models=settings.download_models,
            on_load=on_load,
            offload=settings.offload,
        )

    @property
    def device(self) -> tuple[str, torch.dtype]:
        if self._device is None:
            self._device = pick_device(self.requested_device)
        return self._device

    def source(self, ref: str) -> ModelSource:
        """Where model `ref` is; a model that cannot be found is a TransientError: the
        input waits in the inbox until the model is there."""
        if ref in self._loaded:
            return self._loaded[ref].source
        try:
            return resolve_model(ref, self.search)
        except ConfigError as exc:
            raise TransientError(f"{exc}; the input waits in the inbox") from exc

    def model_hash(self, source: ModelSource) -> str | None:
        file = source.hash_file
        return self.hashes.sha256(file)[:10] if file and file.is_file() else None

    def modules(self, source: ModelSource) -> tuple[str, ...]:
        """Forge's ``Module 1..n``: a single file's separate text encoders and VAE."""
        if source.kind != "single_file":
            return ()
        return file_modules(Path(source.location), self.search)

    def vae_info(self, ref: str | None) -> tuple[str, str | None] | None:
        """A1111's "VAE" (file name) and "VAE hash" (10 hex of its sha256)."""
        if ref is None:
            return None
        path = self.vae_source(ref)
        digest = self.hashes.sha256(path)[:10] if path.is_file() else None
        return vae_name(ref, path), digest

    def pipeline(
        self, ref: str, task: Pipeline, *, vae: str | None = None, offload: Offload | None = None
    ) -> Any:
        """The warm pipeline of model ``ref`` (with VAE ``vae``) for ``task``; loads it once,
        with its weights placed as ``offload`` asks (None: the daemon's setting).

        A model that cannot be loaded is never the input's fault (TransientError); running
        out of memory while loading is raised as it is, for the caller's low-memory retry."""
        loaded = self._entry(ref, vae, offload)
        if task not in loaded.pipelines:
            import diffusers

            # The family's class for the task, sharing the loaded modules (no weights read).
            base = loaded.pipelines["img2img"]
            family = family_of_class(type(base).__name__)
            if task == "edit":
                pipe = self._edit_pipeline(loaded)
            elif family is None:
                pipe = diffusers.AutoPipelineForInpainting.from_pipe(base)
            elif task not in family.pipelines:
                raise ConfigError(f"{family.name} has no {task} pipeline")
            else:
                source = self.pipeline(ref, "edit", vae=vae) if task == "edit_inpaint" else base
                pipe = getattr(diffusers, family.pipelines[task]).from_pipe(source)
            pipe.set_progress_bar_config(disable=True)
            place_derived(pipe, loaded.placement, self.device[0])
            loaded.pipelines[task] = pipe
        return loaded.pipelines[task]

    def _edit_pipeline(self, loaded: _Loaded) -> Any:
        """An instruction-edit model's edit pipeline; any other model is the profile's
        mistake, said plainly (its files wait until the profile names an edit model)."""
        source = loaded.source
        if source.kind == "single_file" or edit_class_name(source.location) is None:
            raise ConfigError(
                f"model {source.name} is not an instruction-edit model: the edit task needs "
                "Flux Kontext (FLUX.1-Kontext-dev), Qwen-Image-Edit or Flux.2, as a diffusers "
                "folder"
            )
        return edit_pipeline(loaded.pipelines["img2img"], source.location)

    def adapters(self, ref: str, task: Pipeline, *, vae: str | None = None) -> AdapterManager:
        """LoRAs and embeddings for a loaded model: what is loaded stays between jobs."""
        loaded = self._entry(ref, vae)
        pipe = self.pipeline(ref, task, vae=vae)
        return AdapterManager(
            pipe,
            state=loaded.adapters,
            lora_dirs=self.lora_dirs,
            # A1111's embeddings are CLIP vectors that only the SD families' encoder takes.
            embedding_dirs=self.embedding_dirs if family_of(pipe).a1111_prompts else [],
            allow_pickle=self.search.allow_pickle,
            hashes=self.hashes,
        )

    def prompts(self, ref: str, *, vae: str | None = None) -> PromptCache:
        """The model's prompt embeddings computed so far (see engines/prompt_cache.py)."""
        return self._entry(ref, vae).prompts

    def scheduler(self, ref: str, choice: SamplerChoice, *, vae: str | None = None) -> Any:
        """The scheduler for a sampler on a loaded model, built once from the model's own
        scheduler configuration (``set_timesteps`` resets it for every call)."""
        loaded = self._entry(ref, vae)
        if choice not in loaded.schedulers:
            family = family_of(loaded.pipelines["img2img"])
            loaded.schedulers[choice] = build_scheduler(
                choice, loaded.scheduler_config, pipeline_passes_sigmas=family.sets_sigmas
            )
        return loaded.schedulers[choice]

    def vae_source(self, ref: str) -> Path:
        return resolve_vae(ref, self.search)

    def _entry(self, ref: str, vae: str | None, offload: Offload | None = None) -> _Loaded:
        key = _key(ref, vae)
        loaded = self._loaded.get(key)
        asked = offload or self.offload
        if loaded is None:
            source = self.source(ref)
            started = time.monotonic()
            try:
                pipe, placement = self._load(source, vae, asked)
            except ConfigError as exc:  # e.g. an unknown checkpoint layout: say it plainly
                raise TransientError(f"could not load model {source.name}: {exc}") from exc
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                raise TransientError(
                    f"could not load model {source.name} ({source.location}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            seconds = time.monotonic() - started
            logger.info("loaded model {} in {:.1f} s ({})", source.name, seconds, _prediction(pipe))
            self.on_load(source.ref, seconds)  # as profiles name it
            loaded = self._loaded[key] = _Loaded(
                source, {"img2img": pipe}, pipe.scheduler.config, offload=asked, placement=placement
            )
            if key in self._low_memory:
                _low_memory(pipe)
        elif offload is not None and asked != loaded.offload and asked not in loaded.told:
            loaded.told.add(asked)  # one model, one placement: reloading would cost minutes
            logger.warning(
                "model {} stays as loaded with offload: {} ({}); offload: {} applies when it "
                "loads again (after unload_after idle, or a restart)",
                loaded.source.name, loaded.offload, NAMES[loaded.placement], asked,
            )  # fmt: skip
        loaded.last_used = time.monotonic()
        return loaded

    def _load(self, source: ModelSource, vae: str | None, offload: Offload) -> tuple[Any, Mode]:
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        device, dtype = self.device
        family = source_family(source)
        if family is not None and family.flow and dtype == torch.float16:
            # T5, Qwen and the flow transformers overflow fp16; bf16 is what they ship in.
            dtype = flow_dtype(device)
        logger.info("loading model {} ({}) on {}", source.name, shown(source.location), device)
        if source.ref.startswith(BUILTIN_PREFIX):
            logger.warning(
                "model {} has random weights: its output is noise. It exists to try the "
                "whole flow offline; point `model:` at a real checkpoint for real images.",
                source.ref,
            )
        options: dict[str, Any] = {"dtype": dtype}
        if source.kind != "single_file" and _has_safety_checker(Path(source.location)):
            # As A1111; and `pull` leaves the checker out, so it must not be loaded.
            options.update(safety_checker=None, requires_safety_checker=False)
        if source.kind == "single_file":
            # Offline: the architecture's configs ship with the project (daemon/data); a
            # flow family's text encoders, VAE and tokenizer are found beside it.
            pipe = load_file_pipeline(
                Path(source.location), dtype=dtype, search=self.search,
                cache_dir=self.state_dir, fp8_storage=device == "cuda",
                vae=self.vae_source(vae) if vae is not None else None,
            )  # fmt: skip
        else:
            # A folder, or a hub model's folder in the local cache: never the network.
            pipe = load_folder_pipeline(source.location, **options)
        built_with_vae = source.kind == "single_file" and family is not None and family.flow
        if vae is not None and not built_with_vae:  # (a flow file was built with it)
            path = self.vae_source(vae)
            logger.info("using VAE {} for model {}", vae_name(vae, path), source.name)
            pipe.vae = load_vae(path, dtype=dtype, like=pipe.vae)
        placement = self._placement(source, offload)
        place(pipe, placement, device)
        pipe.set_progress_bar_config(disable=True)
        if device.startswith("cuda"):
            # torch.compile and offload hooks moving weights under it do not mix
            compile_unet = self.compile_unet and placement == "none"
            _tune_for_cuda(pipe, compile_unet=compile_unet)
        elif device == "cpu":
            _tune_for_cpu(pipe)
        return pipe, placement

    def _placement(self, source: ModelSource, offload: Offload) -> Mode:
        """Where the weights go, said in the log; a flow model's is kept, so that running out
        of memory can step to the next mode (:meth:`offload_further`)."""
        key = _key(source.ref, None)
        family = source_family(source)
        placement = placement_for(
            source, offload, family=family, device=self.device[0], forced=self._forced.get(key)
        )
        logger.info("model {}: {}", source.name, placement.reason)
        if family is not None and family.flow:
            self._placed[key] = placement.mode
        return placement.mode

    def offload_further(self, ref: str, *, vae: str | None = None) -> Mode | None:
        """After running out of memory: a flow model on a GPU is unloaded, to load again with
        its weights offloaded one step further (none → model → sequential), kept until a
        restart. Returns that mode; None where there is no further step (or not a flow model,
        or not a GPU), and the caller tries low-memory mode instead."""
        placed = self._placed.get(_key(ref, None))
        further = stronger(placed, device=self.device[0]) if placed is not None else None
        if further is not None:
            self._forced[_key(ref, None)] = self._placed[_key(ref, None)] = further
            self.unload(ref, vae=vae)
        return further

    def low_memory(self, ref: str, *, vae: str | None = None) -> bool:
        return _key(ref, vae) in self._low_memory

    def use_low_memory(self, ref: str, *, vae: str | None = None, enabled: bool = True) -> None:
        """Attention slicing and VAE slicing/tiling for a model, now and whenever it loads
        again: slower, far less memory. The inpaint pipeline shares the modules.
        ``enabled=False`` forgets it for the next load (a loaded model keeps its mode)."""
        key = _key(ref, vae)
        if not enabled:
            self._low_memory.discard(key)
            return
        self._low_memory.add(key)
        loaded = self._loaded.get(key)
        for pipe in loaded.pipelines.values() if loaded else ():
            _low_memory(pipe)

    def unload(self, ref: str, *, vae: str | None = None) -> None:
        if self._loaded.pop(_key(ref, vae), None) is not None:
            release_memory()

    def unload_idle(self, max_idle: float, *, now: float | None = None) -> list[str]:
        """Drop models unused for ``max_idle`` seconds; returns their names.

        The caller must make sure no render is using them (the executor's lock)."""
        now = time.monotonic() if now is None else now
        idle = [ref for ref, item in self._loaded.items() if now - item.last_used >= max_idle]
        names = [self._loaded.pop(ref).source.name for ref in idle]
        names += self.interrogators.unload_idle(max_idle, now=now)
        names += self.controlnets.unload_idle(max_idle, now=now)
        names += self.annotators.unload_idle(max_idle, now=now)
        names += self.ip_adapters.unload_idle(max_idle, now=now)
        if names:
            release_memory()
        return names

    def unload_all(self) -> None:
        self._loaded.clear()
        self.interrogators.unload_all()
        self.controlnets.unload_all()
        self.annotators.unload_all()
        self.ip_adapters.unload_all()
        release_memory()

    @property
    def loaded(self) -> list[str]:
        return [
            *self._loaded, *self.interrogators.loaded, *self.controlnets.loaded,
            *self.annotators.loaded,
            *self.ip_adapters.loaded,
        ]  # fmt: skip


def vae_name(ref: str, path: Path) -> str:
    """A VAE's name for the parameters: its file or folder name; a hub VAE's repo name (its
    folder in the cache is named by a commit)."""
    return HubRef.parse(ref).name if path.parent.name == "snapshots" else path.name


def _prediction(pipe: Any) -> str:
    """What the model predicts, for the load line: a v-prediction model loaded as epsilon
    (an SD 2.x 768-v file without its yaml) paints only noise, and this says which it got."""
    family = family_of(pipe)
    if family.flow:
        return f"{family.name}, flow matching"
    kind = pipe.scheduler.config.get("prediction_type", "epsilon")
    return "v-prediction" if kind == "v_prediction" else kind


def _key(ref: str, vae: str | None) -> str:
    """Loaded pipelines are per model and VAE; a plain model keeps its own name as key."""
    return ref if vae is None else f"{ref} + vae {vae}"


def _tune_for_cuda(pipe: Any, *, compile_unet: bool) -> None:
    """The CUDA settings, each one line, none of which changes what a model paints beyond
    float rounding (CUDA cannot run on the machines this is developed on: kept obvious):

    * fp16 weights: chosen with the device (:func:`pick_device`);
    * attention: diffusers' default, PyTorch's fused SDPA kernels;
    * the UNet in channels-last memory format, which the convolutions run faster in;
    * TF32 matmuls and convolutions for what stays in fp32 (a process-wide torch switch,
      set when a model is first put on a CUDA device);
    * ``compile_unet``: torch.compile the UNet (minutes of compiling on the first job at
      each new size, then faster steps): opt-in;
    * VAE tiling only above a size (:func:`daemon.engines.latents.vae_tiling`).
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if not hasattr(pipe, "unet"):  # a flow family's transformer has no convolutions
        if compile_unet:
            pipe.transformer = torch.compile(pipe.transformer, fullgraph=False)
        return
    pipe.unet.to(memory_format=torch.channels_last)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=False)


def _tune_for_cpu(pipe: Any) -> None:
    """The VAE in channels-last memory format: oneDNN runs its full-resolution convolutions
    ~25 % faster so (measured at 352 px; the UNet, at an eighth of the size, gains nothing
    measurable). Only float rounding changes (3e-5 at most on a decoded image)."""
    import torch

    if type(pipe.vae).__name__ == "AutoencoderKL":  # Qwen-Image's video VAE has 5-D weights
        pipe.vae.to(memory_format=torch.channels_last)


def _low_memory(pipe: Any) -> None:
    pipe.enable_attention_slicing()
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()


def _has_safety_checker(folder: Path) -> bool:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(index.get("safety_checker") and index["safety_checker"][0])
