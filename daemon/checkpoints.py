"""Single-file checkpoints (A1111 / civitai style), loaded offline.

A single-file checkpoint holds the weights of the UNet, the VAE and the text encoder(s) in the
original (LDM) key layout, and nothing else: no configs, no tokenizer. diffusers'
``from_single_file`` converts the weights, but it needs the architecture's configs, and it
would download them from the hub. So the configs of the three architectures ship with the
project (``daemon/data/configs/<arch>/``, small JSON copies of the published configs of
SD 1.5, SD 2.1(-base) and SDXL base 1.0), and the one CLIP BPE vocabulary all of them use is
generated locally from a vendored merges file (``daemon/data/clip/``; see its README).

Which architecture a file is, is read from its safetensors header alone (key names and
shapes, never tensor data), so ``check`` can tell a user what a file is in milliseconds.

Pickled checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) are only read when the
configuration allows pickles (the callers check that), and even then only with torch's
tensors-only unpickler (``weights_only=True``), which cannot run code: the few harmless
globals old training checkpoints carry (a PyTorch Lightning callback, numpy scalars) are
allowed as inert placeholders, as A1111's own safe unpickler does; anything else is refused
with the names it asked for. Their key layout is read with tensors on the ``meta`` device,
so no weights are read to detect the architecture either.

torch and diffusers are imported inside the functions that need them, so that importing this
module (e.g. for :func:`detect_architecture` in config validation) is instant.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from daemon.errors import ConfigError

if TYPE_CHECKING:
    import torch

Architecture = Literal["sd1", "sd2", "sd2-v", "sdxl"]
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
"""Files written with ``torch.save``: a pickle, which can run code when loaded."""
ARCHITECTURES: tuple[Architecture, ...] = ("sd1", "sd2", "sd2-v", "sdxl")

DATA_DIR = Path(__file__).parent / "data"
CONFIGS_DIR = DATA_DIR / "configs"
CLIP_MERGES_FILE = DATA_DIR / "clip" / "bpe_merges.txt.gz"
CLIP_VOCAB_SIZE = 49408
"""256 byte symbols + the same with ``</w>`` + 48,894 merges + start and end of text."""
_CLIP_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2

_UNET = "model.diffusion_model."
_CONTEXT_DIMS: dict[Architecture, int] = {"sd1": 768, "sd2": 1024, "sd2-v": 1024, "sdxl": 2048}
"""The text width each real architecture's UNet attends to (its attn2.to_k input width)."""
_ATTN2_KEY = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_k\.weight$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # real headers are a few hundred KB
_BUILD_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint's header


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file: ``{key: {"dtype", "shape", ...}}``.

    ``__metadata__`` (free-form strings) stays in the result. Reads a few hundred KB at most,
    never the tensors. Raises ConfigError naming the file if it is not a safetensors file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ConfigError(f"{path}: not a .safetensors file (too short)")
            (size,) = struct.unpack("<Q", prefix)
            if size > _MAX_HEADER_BYTES or size > path.stat().st_size - 8:
                raise ConfigError(f"{path}: not a .safetensors file (bad header size)")
            raw = handle.read(size)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a .safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: not a .safetensors file (header is not a mapping)")
    return header


def is_pickle(path: Path) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def read_layout(path: Path) -> dict[str, Any]:
    """``{key: {"shape": [...]}, ...}`` of a checkpoint, safetensors or (allowed) pickle."""
    return _pickle_layout(Path(path)) if is_pickle(path) else read_header(path)


class _TrainingLeftover:
    """Stands in for a class that old training checkpoints pickle beside their weights.

    The tensors-only unpickler builds it with the saved attributes and nothing else runs."""


_TRAINING_LEFTOVERS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
)


def allow_training_leftovers() -> None:
    """Let ``torch.load(weights_only=True)`` read old SD checkpoints (idempotent).

    The original SD 1.x ``.ckpt`` files hold a Lightning ``ModelCheckpoint`` callback and
    numpy scalars next to ``state_dict``; A1111's safe unpickler allows exactly these. numpy's
    scalar and dtype constructors only make numbers; the callback becomes a placeholder."""
    import importlib

    import numpy as np
    import torch

    scalar = importlib.import_module("numpy._core.multiarray").scalar
    allowed: list[Any] = [(_TrainingLeftover, name) for name in _TRAINING_LEFTOVERS]
    # numpy 1.x pickles name it numpy.core, numpy 2 numpy._core: the same constructor.
    allowed += [
        (scalar, f"{module}.scalar")
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    ]
    allowed.append(np.dtype)
    allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    torch.serialization.add_safe_globals(allowed)


def load_pickle(path: Path, *, map_location: str = "cpu") -> Any:
    """What a pickled checkpoint holds, through the tensors-only unpickler.

    ConfigError naming the file when it is not a torch file or needs more than that
    unpickler may build (then it says which globals it asked for)."""
    import pickle
    import zipfile

    import torch

    allow_training_leftovers()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            wanted = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # an old (non-zip) file: the unpickler's own message says it
            wanted = str(exc).strip().splitlines()[-1]
        raise ConfigError(
            f"{path}: this pickle needs more than tensors to load ({wanted}), so loading it "
            "could run code; convert it to .safetensors with a tool you trust"
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: not a readable torch checkpoint ({exc})") from exc


def _pickle_layout(path: Path) -> dict[str, Any]:
    import torch

    data = load_pickle(path, map_location="meta")  # shapes only: no weights are read
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # Lightning wraps the weights, as diffusers unwraps them
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds a {type(data).__name__}, not a dictionary of weights")
    return {
        str(key): {"shape": list(value.shape), "dtype": str(value.dtype)}
        for key, value in data.items()
        if isinstance(value, torch.Tensor)
    }


def detect_architecture(path: Path) -> Architecture:
    """Which Stable Diffusion architecture a single-file checkpoint is, from its header.

    * ``sdxl``: two text encoders, ``conditioner.embedders.0.transformer.…`` (CLIP ViT-L) and
      ``conditioner.embedders.1.model.…`` (OpenCLIP ViT-bigG); 2048-wide UNet context.
    * ``sd2``: one OpenCLIP ViT-H text encoder, ``cond_stage_model.model.…``; 1024-wide context.
    * ``sd1``: one CLIP ViT-L text encoder, ``cond_stage_model.transformer.…``; 768-wide context.

    SD 2.x comes in two kinds that the weights cannot tell apart: 512-px epsilon-prediction
    (2.x-base) and 768-px v-prediction. Epsilon is assumed (``sd2``) unless the file says
    otherwise: a ``v_pred`` key or ``modelspec.prediction_type: v`` metadata, or an A1111
    sidecar ``<name>.yaml`` beside it with ``parameterization: "v"`` (A1111's own convention
    for such files) — then ``sd2-v``. A v model run as epsilon gives washed-out, noisy images;
    put the yaml beside the file (or pass ``architecture="sd2-v"`` to
    :func:`load_single_file`) to fix it.

    Raises ConfigError naming the file for anything else: unknown layout, a LoRA or a VAE
    given as a model, inpainting (9-channel) UNets, the SDXL refiner.
    """
    path = Path(path)
    header = read_layout(path)
    arch = _classify(path, header)
    if arch == "sd2" and _says_v_prediction(path, header):
        return "sd2-v"
    return arch


def _classify(path: Path, header: Mapping[str, Any]) -> Architecture:
    keys = [k for k in header if k != "__metadata__"]

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if not has(_UNET):
        raise ConfigError(f"{path}: not a Stable Diffusion checkpoint{_what_else(keys)}")
    conv_in = header.get(_UNET + "input_blocks.0.0.weight")
    in_channels = _shape(conv_in)[1:2]
    if in_channels and in_channels[0] != 4:
        raise ConfigError(
            f"{path}: its UNet takes {in_channels[0]} input channels (an inpainting or "
            "instruct-pix2pix model); only normal 4-channel models are supported, and they "
            "inpaint too"
        )
    arch: Architecture
    if has("conditioner.embedders.1.model."):
        arch = "sdxl"
    elif has("conditioner.embedders.0.model."):
        raise ConfigError(
            f"{path}: an SDXL refiner checkpoint; only SDXL base models are supported"
        )
    elif has("cond_stage_model.model."):
        arch = "sd2"
    elif has("cond_stage_model.transformer."):
        arch = "sd1"
    else:
        raise ConfigError(
            f"{path}: has a UNet but no text encoder of SD 1.x (cond_stage_model.transformer.*), "
            "SD 2.x (cond_stage_model.model.*) or SDXL (conditioner.embedders.*): unknown layout"
        )
    # Cross-check with the UNet's context width when it is one of the real ones (tiny test
    # models have their own widths): a mismatch means a mixed-up or broken file.
    context = next((_shape(header[k])[-1:] for k in keys if _ATTN2_KEY.match(k)), [])
    known = set(_CONTEXT_DIMS.values())
    if context and context[0] in known and context[0] != _CONTEXT_DIMS[arch]:
        raise ConfigError(
            f"{path}: its text encoder looks like {arch} but its UNet attends to "
            f"{context[0]}-wide text (expected {_CONTEXT_DIMS[arch]}): unknown layout"
        )
    return arch


def _shape(entry: Any) -> list[int]:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return [int(n) for n in shape] if isinstance(shape, list) else []


def _what_else(keys: list[str]) -> str:
    """A hint for files that are something other than a model."""
    if any(k.startswith(("lora_", "lora_unet_", "lora_te")) or ".lora_" in k for k in keys):
        return " (it looks like a LoRA; use it as a LoRA, not as `model:`)"
    vae = ("encoder.down.", "first_stage_model.encoder.", "encoder.down_blocks.")
    if any(k.startswith(vae) for k in keys):
        return " (it looks like a VAE; use it as `vae:`)"
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    return f": no UNet weights (model.diffusion_model.*); first keys: {sample}"


def _says_v_prediction(path: Path, header: Mapping[str, Any]) -> bool:
    """True if the file or its A1111 sidecar yaml declares v-prediction (see detect)."""
    if "v_pred" in header:  # the marker ComfyUI and others add to v-prediction files
        return True
    metadata = header.get("__metadata__")
    if isinstance(metadata, dict) and str(metadata.get("modelspec.prediction_type", "")) in (
        "v",
        "v_prediction",
    ):
        return True
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return False
    from daemon.yamlsafe import YamlProblem, read_mapping

    try:
        original = read_mapping(sidecar)
    except YamlProblem as exc:
        raise ConfigError(f"{sidecar}: {exc}") from exc
    model = original.get("model")
    params = model.get("params") if isinstance(model, dict) else None
    return isinstance(params, dict) and params.get("parameterization") == "v"


# ---------------------------------------------------------------------------------------------
# The CLIP BPE vocabulary and the config folders


def default_cache_dir() -> Path:
    """Where generated files go when the caller names no folder: the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "img2imgd"


def clip_merges() -> list[str]:
    """The 48,894 BPE merges of OpenAI's CLIP tokenizer ("a b" lines), from the vendored file."""
    try:
        lines = gzip.decompress(_package_data(CLIP_MERGES_FILE)).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{CLIP_MERGES_FILE}: damaged ({exc}); {_REINSTALL}") from exc
    merges = lines[1 : 1 + _CLIP_MERGES]  # line 0 is the file's version header
    if len(merges) != _CLIP_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise ConfigError(f"{CLIP_MERGES_FILE}: damaged (not {_CLIP_MERGES} merges); {_REINSTALL}")
    return merges


_REINSTALL = "reinstall img2imgd (its package data is incomplete)"


def _package_data(file: Path) -> bytes:
    """A file shipped in ``daemon/data``; its absence is a broken install, said plainly."""
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read ({exc.strerror}); {_REINSTALL}") from exc


def clip_vocab(merges: list[str]) -> dict[str, int]:
    """CLIP's token ids, built as OpenAI's ``SimpleTokenizer`` builds them.

    The 256 byte-level symbols, the same 256 with ``</w>`` (end of word), one token per merge
    in rank order, then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 ids, identical to
    the ``vocab.json`` of the tokenizers of SD 1.x, 2.x and SDXL.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols)]
    tokens += [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def ensure_clip_tokenizer_files(cache_dir: Path | None = None) -> Path:
    """``<cache_dir>/tokenizers/clip/`` with ``vocab.json`` and ``merges.txt``, made once.

    Why generated: the two files are 1.5 MB and derive entirely from the 0.2 MB vendored
    merges file. The folder appears whole (built aside, then renamed) or not at all.
    """
    final = (cache_dir or default_cache_dir()) / "tokenizers" / "clip"
    if (final / "vocab.json").is_file():
        return final

    def build(tmp: Path) -> None:
        merges = clip_merges()
        (tmp / "merges.txt").write_text(
            "\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8"
        )
        vocab = json.dumps(clip_vocab(merges), ensure_ascii=False)
        (tmp / "vocab.json").write_text(vocab, encoding="utf-8")

    return _build_atomically(final, build, done="vocab.json")


def ensure_config_dir(architecture: Architecture, cache_dir: Path | None = None) -> Path:
    """A complete local diffusers config folder for `architecture`, for ``from_single_file``.

    The shipped JSON configs plus ``vocab.json`` / ``merges.txt`` in each tokenizer folder,
    assembled once under ``<cache_dir>/single-file-configs/<arch>-<hash>/``. The hash is of
    the shipped files, so a project update that changes a config gets a fresh folder.
    """
    source = CONFIGS_DIR / architecture
    if not (source / "model_index.json").is_file():
        raise ConfigError(f"no configs for architecture {architecture!r} at {source}; {_REINSTALL}")
    cache_dir = cache_dir or default_cache_dir()
    files = sorted(p for p in source.rglob("*") if p.is_file())
    digest = hashlib.sha256(_package_data(CLIP_MERGES_FILE))
    for file in files:
        digest.update(str(file.relative_to(source)).encode() + b"\0" + _package_data(file))
    final = cache_dir / "single-file-configs" / f"{architecture}-{digest.hexdigest()[:12]}"
    if (final / "model_index.json").is_file():
        return final
    clip = ensure_clip_tokenizer_files(cache_dir)

    def build(tmp: Path) -> None:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        for tokenizer in tmp.glob("tokenizer*"):
            for name in ("vocab.json", "merges.txt"):
                _link_or_copy(clip / name, tokenizer / name)

    return _build_atomically(final, build, done="model_index.json")


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link saves 1.5 MB per tokenizer; a copy where links are not possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _build_atomically(final: Path, build: Any, *, done: str) -> Path:
    """Run ``build(tmp)`` in a temp folder beside `final`, then rename it into place.

    Two processes building at once both succeed; the loser discards its copy (as
    :func:`daemon.builtin.ensure_builtin` does).
    """
    with _BUILD_LOCK:
        if (final / done).is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            build(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / done).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------
# Loading


def load_single_file(
    path: Path | str,
    *,
    dtype: torch.dtype,
    vae: Path | None = None,
    config_dir: Path | None = None,
    architecture: Architecture | None = None,
    cache_dir: Path | None = None,
) -> Any:
    """Load a single-file checkpoint as an img2img pipeline, offline.

    ``StableDiffusionImg2ImgPipeline`` for SD 1.x / 2.x, ``StableDiffusionXLImg2ImgPipeline``
    for SDXL (``AutoPipelineForInpainting.from_pipe`` turns either into its inpaint pipeline).

    * `architecture`: as :func:`detect_architecture` finds it unless given (e.g. ``sd2-v``
      for a v-prediction SD 2.x file without a sidecar yaml).
    * `config_dir`: a local diffusers folder of the same architecture to take the configs and
      tokenizers from, instead of the shipped ones (tests use a tiny model's folder).
    * `vae`: a VAE to use instead of the checkpoint's own (see :func:`load_vae`).
    * `cache_dir`: where the config folders and the tokenizer vocabulary are generated (the
      daemon passes its state folder); :func:`default_cache_dir` if None.

    An SD 1.x or SDXL file that declares v-prediction (``v_pred`` key, ``modelspec``
    metadata or sidecar yaml) gets a v-prediction scheduler, and a ``ztsnr`` key turns on
    zero-terminal-SNR rescaling, as ComfyUI reads those markers.
    """
    path = Path(path)
    header = read_layout(path)
    arch = architecture or _classify(path, header)
    v_prediction = _says_v_prediction(path, header)
    if arch == "sd2" and v_prediction and architecture is None:
        arch = "sd2-v"
    config = config_dir or ensure_config_dir(arch, cache_dir)

    options: dict[str, Any] = {
        "config": str(config),
        "local_files_only": True,  # never the hub: the configs are all local
        "dtype": dtype,
    }
    if vae is not None:
        # Given as a component, the checkpoint's own VAE is never built.
        options["vae"] = _load_vae(Path(vae), dtype=dtype, config=Path(config) / "vae")
    if is_pickle(path):
        allow_training_leftovers()  # diffusers reads it with weights_only=True
    pipe: Any
    if arch == "sdxl":
        from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
            StableDiffusionXLImg2ImgPipeline,
        )

        options["add_watermarker"] = False  # as A1111; it also needs an extra package
        pipe = StableDiffusionXLImg2ImgPipeline.from_single_file(str(path), **options)
    else:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
            StableDiffusionImg2ImgPipeline,
        )

        options.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = StableDiffusionImg2ImgPipeline.from_single_file(str(path), **options)
    scheduler = pipe.scheduler
    if v_prediction and scheduler.config.get("prediction_type") != "v_prediction":
        # SD 1.x / SDXL v-prediction fine-tunes: no published config to ship for them.
        pipe.scheduler = type(scheduler).from_config(
            scheduler.config,
            prediction_type="v_prediction",
            rescale_betas_zero_snr="ztsnr" in header,
        )
    return pipe


def load_vae(ref: Path, *, dtype: torch.dtype | None = None, like: Any = None) -> Any:
    """Load a VAE to swap into a pipeline (``pipe.vae = load_vae(ref, like=pipe.vae)``), offline.

    `ref` is a single ``.safetensors`` VAE (original layout as A1111 uses, with or without the
    ``first_stage_model.`` prefix, or diffusers layout), or a diffusers VAE folder (one with
    ``config.json``, or a model folder with ``vae/``). A single file carries no config: it
    gets that of `like`, the pipeline's current VAE, when given — so the settings that belong
    to the model family rather than to the file (latent scaling factor, fp16 upcasting) stay
    right — and SD's otherwise. A folder's own config is used as it is.
    """
    if like is None:
        return _load_vae(Path(ref), dtype=dtype, config=CONFIGS_DIR / "sd1" / "vae")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "vae"
        like.save_config(config)
        return _load_vae(Path(ref), dtype=dtype, config=config)


def _load_vae(ref: Path, *, dtype: torch.dtype | None, config: Path) -> Any:
    """`config`: a folder with the ``config.json`` a single file is loaded with."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    if ref.is_dir():
        for folder, subfolder in ((ref, None), (ref / "vae", "vae")):
            if (folder / "config.json").is_file():
                return AutoencoderKL.from_pretrained(
                    str(ref), subfolder=subfolder, torch_dtype=dtype, local_files_only=True
                )
        raise ConfigError(f"vae {ref}: a folder without config.json or vae/config.json")
    if not ref.is_file():
        raise ConfigError(f"vae {ref}: not found")
    # A pickle gets here only when the configuration allows pickles (models.resolve_vae).
    keys = [k for k in read_layout(ref) if k != "__metadata__"]
    vae_prefixes = ("encoder.", "decoder.", "first_stage_model.encoder.", "vae.encoder.")
    if not any(k.startswith(vae_prefixes) for k in keys):
        raise ConfigError(f"vae {ref}: no VAE weights (encoder.*/decoder.*) in it")
    if is_pickle(ref):
        allow_training_leftovers()
    # SD's 8x VAE is also SDXL's: the architecture is the same whichever config is used.
    return AutoencoderKL.from_single_file(
        str(ref),
        config=str(config.parent),
        subfolder=config.name,
        torch_dtype=dtype,
        local_files_only=True,
    )
