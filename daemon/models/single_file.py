"""Single-file checkpoints (A1111 / civitai style), loaded offline.

A single-file checkpoint holds the weights of the UNet, the VAE and the text encoder(s) in the
original (LDM) key layout, and nothing else: no configs, no tokenizer. diffusers'
``from_single_file`` converts the weights, but it needs the architecture's configs, and it
would download them from the hub. So the configs of the three architectures ship with the
project (``daemon/data/configs/<arch>/``, small JSON copies of the published configs of
SD 1.5, SD 2.1(-base) and SDXL base 1.0), and the one CLIP BPE vocabulary all of them use is
generated locally from a vendored merges file (``daemon/data/clip/``; see its README).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.atomic import build_folder
from daemon.errors import ConfigError
from daemon.models.checkpoints import (
    Architecture,
    allow_training_leftovers,
    classify_layout,
    is_pickle,
    read_layout,
    says_v_prediction,
)

if TYPE_CHECKING:
    import torch

DATA_DIR = Path(__file__).parent.parent / "data"
CONFIGS_DIR = DATA_DIR / "configs"
CLIP_MERGES_FILE = DATA_DIR / "clip" / "bpe_merges.txt.gz"
CLIP_VOCAB_SIZE = 49408
"""256 byte symbols + the same with ``</w>`` + 48,894 merges + start and end of text."""
_CLIP_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2
_BUILD_LOCK = threading.Lock()


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


def ensure_config_dir(architecture: str, cache_dir: Path | None = None) -> Path:
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
    """`final`, built once per process by ``build(folder)`` (see daemon.atomic.build_folder)."""
    with _BUILD_LOCK:
        return build_folder(final, build, complete=lambda folder: (folder / done).is_file())


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
    arch = architecture or classify_layout(path, header)
    v_prediction = says_v_prediction(path, header)
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
