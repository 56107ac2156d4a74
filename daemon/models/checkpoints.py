"""Checkpoint files: what architecture a file is, and reading pickles safely.

Which architecture a single-file checkpoint (A1111 / civitai style) is, is read from its
safetensors header alone (key names and shapes, never tensor data), so ``check`` can tell a
user what a file is in milliseconds. Loading one is :mod:`daemon.models.single_file`.

Pickled checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) are only read when the
configuration allows pickles (the callers check that), and even then only with torch's
tensors-only unpickler (``weights_only=True``), which cannot run code: the few harmless
globals old training checkpoints carry (a PyTorch Lightning callback, numpy scalars) are
allowed as inert placeholders, as A1111's own safe unpickler does; anything else is refused
with the names it asked for. Their key layout is read with tensors on the ``meta`` device,
so no weights are read to detect the architecture either.

torch is imported inside the functions that need it, so that importing this module (e.g. for
:func:`detect_architecture` in config validation) is instant.
"""

from __future__ import annotations

import importlib
import json
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from daemon.config.yamlsafe import YamlProblem, read_mapping
from daemon.errors import ConfigError

if TYPE_CHECKING:
    pass

Architecture = Literal["sd1", "sd2", "sd2-v", "sdxl"]
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
"""Files written with ``torch.save``: a pickle, which can run code when loaded."""
ARCHITECTURES: tuple[Architecture, ...] = ("sd1", "sd2", "sd2-v", "sdxl")


_UNET = "model.diffusion_model."
_CONTEXT_DIMS: dict[Architecture, int] = {"sd1": 768, "sd2": 1024, "sd2-v": 1024, "sdxl": 2048}
"""The text width each real architecture's UNet attends to (its attn2.to_k input width)."""
_ATTN2_KEY = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_k\.weight$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # real headers are a few hundred KB


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
    arch = classify_layout(path, header)
    if arch == "sd2" and says_v_prediction(path, header):
        return "sd2-v"
    return arch


def classify_layout(path: Path, header: Mapping[str, Any]) -> Architecture:
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


def says_v_prediction(path: Path, header: Mapping[str, Any]) -> bool:
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

    try:
        original = read_mapping(sidecar)
    except YamlProblem as exc:
        raise ConfigError(f"{sidecar}: {exc}") from exc
    model = original.get("model")
    params = model.get("params") if isinstance(model, dict) else None
    return isinstance(params, dict) and params.get("parameterization") == "v"
