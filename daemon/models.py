"""Model references → loaded diffusers pipelines, kept warm and shared between tasks.

A profile's ``model:`` is one of

* ``builtin:tiny-sd`` — generated once into the state folder, then loaded like any folder;
* a diffusers folder or a single-file ``.safetensors`` checkpoint (absolute, or relative to
  the working directory); a pickled ``.ckpt``/``.pt``/``.pth``/``.bin`` only when the
  configuration sets ``allow_pickle`` (and then through the tensors-only unpickler);
* a name looked up in ``models_dir`` (also in A1111's ``Stable-diffusion`` sub-folder), with
  or without its extension;
* a hub repo id (``org/name``), downloaded when online and then used from the local cache.

The img2img pipeline of a model is loaded once; the inpaint pipeline is made from it with
``from_pipe``, which shares the same modules, so switching tasks never reloads weights.
torch and diffusers are imported here, lazily, so that ``check`` and the pure modules start fast.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from daemon.builtin import (
    BUILTIN_MODELS,
    BUILTIN_PREFIX,
    INTERROGATION_BUILTINS,
    ensure_builtin,
    is_builtin,
    model_hash_file,
)
from daemon.checkpoints import PICKLE_SUFFIXES, is_pickle
from daemon.errors import ConfigError, TransientError
from daemon.hashes import HashCache
from daemon.samplers import SamplerChoice

if TYPE_CHECKING:
    import torch

    from daemon.adapters import AdapterManager

SourceKind = Literal["folder", "single_file", "hub"]
PipelineTask = Literal["img2img", "inpaint"]
SAFE_CHECKPOINT_SUFFIXES = (".safetensors",)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    ref: str  # as written in the profile
    kind: SourceKind
    location: str  # a path, or a hub repo id
    name: str  # A1111's "Model": the checkpoint's stem

    @property
    def hash_file(self) -> Path | None:
        """The file whose sha256 is A1111's "Model hash"."""
        if self.kind == "single_file":
            return Path(self.location)
        if self.kind == "folder":
            return model_hash_file(Path(self.location))
        return None


def resolve_model(
    ref: str,
    *,
    models_dir: Path | None,
    state_dir: Path,
    build: bool = True,
    allow_pickle: bool = False,
) -> ModelSource:
    """Find what ``ref`` names, without loading it. Unknown → ConfigError saying where we looked.

    ``build=False`` only checks a built-in's name instead of generating it (``check`` stays fast).
    A pickled checkpoint is a ConfigError unless `allow_pickle`.
    """
    ref = ref.strip()
    if is_builtin(ref):
        name = ref[len(BUILTIN_PREFIX) :]
        if name in INTERROGATION_BUILTINS:
            raise ConfigError(
                f"model '{ref}' is an interrogation model: use it with `task: interrogate`, "
                "or as interrogate_model / tagger_model"
            )
        if not build and name in BUILTIN_MODELS:
            return ModelSource(ref, "folder", str(state_dir / "builtin" / name), f"builtin-{name}")
        try:
            folder = ensure_builtin(name, state_dir / "builtin")
        except ValueError as exc:
            raise ConfigError(f"model '{ref}': {exc}") from exc
        return ModelSource(ref, "folder", str(folder), f"builtin-{name}")
    looked: list[Path] = []
    for candidate in _candidates(ref, models_dir):
        looked.append(candidate)
        if candidate.is_dir() and (candidate / "model_index.json").is_file():
            return ModelSource(ref, "folder", str(candidate.resolve()), candidate.name)
        if candidate.is_file():
            if is_pickle(candidate) and not allow_pickle:
                _refuse_pickle("model", candidate)
            if candidate.suffix.lower() in (*SAFE_CHECKPOINT_SUFFIXES, *PICKLE_SUFFIXES):
                return ModelSource(ref, "single_file", str(candidate.resolve()), candidate.stem)
    if _looks_like_repo_id(ref):
        return ModelSource(ref, "hub", ref, ref.split("/")[-1])
    places = ", ".join(str(p) for p in looked) or "nowhere (no models_dir configured)"
    raise ConfigError(
        f"model '{ref}' not found: looked for a diffusers folder or a .safetensors file at {places}"
    )


def _looks_like_repo_id(ref: str) -> bool:
    """``org/name`` on the hub; never something that is plainly a file name or a path."""
    suffix = Path(ref).suffix.lower()
    is_file_name = suffix in (*SAFE_CHECKPOINT_SUFFIXES, *PICKLE_SUFFIXES)
    return bool(_REPO_ID.match(ref)) and not is_file_name and not ref.startswith(".")


def _candidates(ref: str, models_dir: Path | None) -> list[Path]:
    given = Path(ref).expanduser()
    roots = [Path.cwd()] if not given.is_absolute() else [Path("/")]
    if models_dir is not None and not given.is_absolute():
        roots += [models_dir, models_dir / "Stable-diffusion"]
    found = []
    for root in roots:
        base = root / given
        found.append(base)
        if not base.suffix:
            found += [
                base.with_name(base.name + s) for s in (*SAFE_CHECKPOINT_SUFFIXES, *PICKLE_SUFFIXES)
            ]
    return found


def _refuse_pickle(kind: str, path: Path) -> None:
    raise ConfigError(
        f"{kind} {path} is a pickled checkpoint ({path.suffix}), which can run code when "
        "loaded; convert it to .safetensors, or set `allow_pickle: true` in the daemon's "
        "configuration if you trust the file"
    )


def quiet_libraries() -> None:
    """diffusers and transformers print progress bars and advice meant for notebooks.

    A daemon's log wants neither; these are defaults, so a user's environment still wins.
    Must run before transformers is imported to take full effect.
    """
    for name, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
    ):
        os.environ.setdefault(name, value)


def pick_device(requested: str) -> tuple[str, torch.dtype]:
    """``auto`` → CUDA with fp16 when present, else Apple MPS (fp16), else CPU (fp32)."""
    import torch

    device = requested
    if requested == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dtype = torch.float32 if device == "cpu" else torch.float16
    return device, dtype


@dataclass
class _Loaded:
    source: ModelSource
    pipelines: dict[PipelineTask, Any]
    scheduler_config: Any  # the model's own, before any sampler replaced it
    schedulers: dict[SamplerChoice, Any] = field(default_factory=dict)
    last_used: float = 0.0


class ModelCache:
    """Loaded pipelines by model reference. Used by the single worker thread."""

    def __init__(
        self,
        *,
        models_dir: Path | None,
        state_dir: Path,
        device: str = "auto",
        lora_dirs: list[Path] | None = None,
        embedding_dirs: list[Path] | None = None,
        allow_pickle: bool = False,
    ) -> None:
        from daemon.adapters import default_embedding_dirs, default_lora_dirs

        quiet_libraries()
        self.lora_dirs = lora_dirs if lora_dirs is not None else default_lora_dirs(models_dir)
        self.embedding_dirs = (
            embedding_dirs if embedding_dirs is not None else default_embedding_dirs(models_dir)
        )
        self.allow_pickle = allow_pickle
        self.models_dir = models_dir
        self.state_dir = state_dir
        self.requested_device = device
        self.hashes = HashCache(state_dir / "hashes.json")
        self._loaded: dict[str, _Loaded] = {}
        self._low_memory: set[str] = set()  # refs that ran out of GPU memory once
        self._device: tuple[str, torch.dtype] | None = None
        from daemon.interrogation import Interrogators

        self.interrogators = Interrogators(self)  # the BLIP/CLIP/tagger models, warm too

    @property
    def device(self) -> tuple[str, torch.dtype]:
        if self._device is None:
            self._device = pick_device(self.requested_device)
        return self._device

    def source(self, ref: str) -> ModelSource:
        if ref in self._loaded:
            return self._loaded[ref].source
        return resolve_model(
            ref,
            models_dir=self.models_dir,
            state_dir=self.state_dir,
            allow_pickle=self.allow_pickle,
        )

    def model_hash(self, source: ModelSource) -> str | None:
        file = source.hash_file
        return self.hashes.sha256(file)[:10] if file and file.is_file() else None

    def pipeline(self, ref: str, task: PipelineTask, *, vae: str | None = None) -> Any:
        """The warm pipeline of model ``ref`` (with VAE ``vae``) for ``task``; loads it once."""
        key = _key(ref, vae)
        loaded = self._loaded.get(key)
        if loaded is None:
            source = self.source(ref)
            try:
                pipe = self._load(source, vae)
                loaded = _Loaded(source, {"img2img": pipe}, pipe.scheduler.config)
            except ConfigError as exc:  # e.g. an unknown checkpoint layout: say it plainly
                raise TransientError(f"could not load model {source.name}: {exc}") from exc
            except Exception as exc:  # a broken or unreachable model is never the input's fault
                raise TransientError(
                    f"could not load model {source.name} ({source.location}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._loaded[key] = loaded
            if key in self._low_memory:
                _low_memory(loaded.pipelines["img2img"])
        loaded.last_used = time.monotonic()
        if task not in loaded.pipelines:
            from diffusers import AutoPipelineForInpainting

            loaded.pipelines[task] = AutoPipelineForInpainting.from_pipe(
                loaded.pipelines["img2img"]
            )
            loaded.pipelines[task].set_progress_bar_config(disable=True)
        return loaded.pipelines[task]

    def adapters(self, pipe: Any) -> AdapterManager:
        """LoRAs and embeddings for a loaded pipeline (they stay loaded between jobs)."""
        from daemon.adapters import AdapterManager

        return AdapterManager(
            pipe,
            lora_dirs=self.lora_dirs,
            embedding_dirs=self.embedding_dirs,
            allow_pickle=self.allow_pickle,
            hashes=self.hashes,
        )

    def vae_source(self, ref: str) -> Path:
        return resolve_vae(ref, models_dir=self.models_dir, allow_pickle=self.allow_pickle)

    def _load(self, source: ModelSource, vae: str | None) -> Any:
        from diffusers import AutoPipelineForImage2Image
        from diffusers.utils import logging as diffusers_logging

        from daemon.checkpoints import load_single_file, load_vae

        diffusers_logging.disable_progress_bar()

        device, dtype = self.device
        logger.info("loading model {} ({}) on {}", source.name, source.location, device)
        if source.ref.startswith(BUILTIN_PREFIX):
            logger.warning(
                "model {} has random weights: its output is noise. It exists to try the "
                "whole flow offline; point `model:` at a real checkpoint for real images.",
                source.ref,
            )
        options: dict[str, Any] = {"dtype": dtype}
        if source.kind == "folder" and _has_safety_checker(Path(source.location)):
            options.update(safety_checker=None, requires_safety_checker=False)  # as A1111
        if source.kind == "single_file":
            # Offline: the architecture's configs ship with the project (daemon/data).
            pipe = load_single_file(source.location, dtype=dtype, cache_dir=self.state_dir)
        else:
            pipe = AutoPipelineForImage2Image.from_pretrained(
                source.location, local_files_only=source.kind == "folder", **options
            )
        if vae is not None:
            path = self.vae_source(vae)
            logger.info("using VAE {} for model {}", path.name, source.name)
            pipe.vae = load_vae(path, dtype=dtype, like=pipe.vae)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def unload(self, ref: str) -> None:
        if self._loaded.pop(ref, None) is not None:
            _free_device_memory()

    def scheduler(self, ref: str, choice: SamplerChoice, *, vae: str | None = None) -> Any:
        """The scheduler for a sampler on a loaded model, built once from the model's own
        scheduler configuration (``set_timesteps`` resets it for every call)."""
        from daemon.samplers import build_scheduler

        loaded = self._loaded[_key(ref, vae)]
        if choice not in loaded.schedulers:
            loaded.schedulers[choice] = build_scheduler(choice, loaded.scheduler_config)
        return loaded.schedulers[choice]

    def use_low_memory(self, ref: str, *, vae: str | None = None) -> None:
        """Attention slicing and VAE slicing/tiling for a model, now and whenever it loads
        again: slower, far less memory. The inpaint pipeline shares the modules."""
        key = _key(ref, vae)
        self._low_memory.add(key)
        loaded = self._loaded.get(key)
        for pipe in loaded.pipelines.values() if loaded else ():
            _low_memory(pipe)

    def unload_idle(self, max_idle: float, *, now: float | None = None) -> list[str]:
        """Drop models unused for ``max_idle`` seconds; returns their names.

        The caller must make sure no job is using them (the daemon holds its GPU lock).
        """
        now = time.monotonic() if now is None else now
        idle = [ref for ref, item in self._loaded.items() if now - item.last_used >= max_idle]
        names = [self._loaded.pop(ref).source.name for ref in idle]
        names += self.interrogators.unload_idle(max_idle, now=now)
        if names:
            _free_device_memory()
        return names

    def unload_all(self) -> None:
        self._loaded.clear()
        self.interrogators.unload_all()
        _free_device_memory()

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded) + self.interrogators.loaded


def _key(ref: str, vae: str | None) -> str:
    """Loaded pipelines are per model and VAE; a plain model keeps its own name as key."""
    return ref if vae is None else f"{ref} + vae {vae}"


def resolve_vae(ref: str, *, models_dir: Path | None, allow_pickle: bool = False) -> Path:
    """A VAE: a path, or a name in ``models_dir/VAE`` (A1111's folder), with or without
    its extension; a diffusers folder works too. Pickled files unless `allow_pickle` are a
    ConfigError; ``.safetensors`` wins over a pickle of the same name."""
    given = Path(ref).expanduser()
    roots = [Path.cwd()] if not given.is_absolute() else [Path("/")]
    if models_dir is not None and not given.is_absolute():
        roots += [models_dir / "VAE", models_dir]
    looked = []
    for root in roots:
        base = root / given
        suffixes = ("", *SAFE_CHECKPOINT_SUFFIXES, *PICKLE_SUFFIXES)
        for candidate in (base.with_name(base.name + s) for s in suffixes):
            looked.append(candidate)
            if candidate.is_dir():
                return candidate
            if candidate.is_file():
                if is_pickle(candidate) and not allow_pickle:
                    _refuse_pickle("vae", candidate)
                return candidate
    raise ConfigError(f"vae '{ref}' not found: looked at {', '.join(str(p) for p in looked)}")


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


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
