"""Loading a flow family's single file (SD 3 / 3.5, Flux.1, Qwen-Image) offline, with its parts.

What the file is comes from :mod:`daemon.models.flow_files`, the parts it lacks from
:mod:`daemon.models.flow_components`, the configs from ``daemon/data/configs/<variant>/``
(the published ones; nothing is fetched). Every module is built from the weights it is given:

* the transformer through diffusers' ``from_single_file`` with a state dict (its converters
  know BFL's and SD3's names; Qwen-Image's files already use diffusers' names), its depth,
  input channels and (Qwen) widths read from the weights, so fine-tunes of another depth and
  the tests' small models load with the same code;
* text encoders from ComfyUI's files (HF names, with or without ``text_model.``; Qwen2.5-VL's
  ``model.``/``visual.`` as ComfyUI writes them) or from a folder with ``config.json``;
* the VAE through diffusers' LDM converter (Flux, SD 3) or as diffusers / Wan names (Qwen).

fp8 weights are cast up to the compute dtype (scaled ones multiplied by their scales, see
:mod:`daemon.models.fp8`); on CUDA the transformer of an fp8 file keeps fp8 storage.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from daemon.errors import ConfigError
from daemon.models.flow_components import FlowParts, find_parts, group
from daemon.models.flow_files import (
    GGUF_SUFFIX,
    VAE_PREFIXES,
    FlowFile,
    block_counts,
    detect_file,
    read_model_layout,
)
from daemon.models.folder_pipeline import IMG2IMG_CLASS
from daemon.models.fp8 import dequantize
from daemon.models.resolve import Search
from daemon.models.single_file import ensure_config_dir, load_single_file

if TYPE_CHECKING:
    import torch

Tensors = dict[str, "torch.Tensor"]
_V = TypeVar("_V")
LOADABLE = ("flux-dev", "flux-schnell", "sd3-medium", "sd35-medium", "sd35-large", "qwen-image")
_SLOTS = {  # encoder name -> the pipeline's component
    "flux": {"clip_l": "text_encoder", "t5xxl": "text_encoder_2"},
    "sd3": {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"},
    "qwen": {"qwen_2.5_vl": "text_encoder"},
}
_BIG_TOKENIZER = {"flux": "tokenizer_2", "sd3": "tokenizer_3", "qwen": "tokenizer"}


def load_flow_file(
    path: Path,
    flow: FlowFile,
    *,
    dtype: torch.dtype,
    search: Search,
    vae: Path | None = None,
    cache_dir: Path | None = None,
    fp8_storage: bool = False,
) -> tuple[Any, FlowParts]:
    """The img2img pipeline of `flow` (file `path`) and the parts it was built with.

    ConfigError, saying what to put where, when a part is missing or the file is a family
    whose single files are not supported; `fp8_storage`: keep an fp8 file's transformer
    weights in fp8 (CUDA: half the memory; computed in `dtype`)."""
    parts = require_flow_parts(path, flow, search, vae=vae)
    import diffusers

    kind = group(flow.variant)
    config = ensure_config_dir(flow.variant, cache_dir)  # with CLIP's generated vocabulary
    index = json.loads((config / "model_index.json").read_text())
    state, transformer = _file_and_transformer(path, flow, config, dtype)
    if fp8_storage and flow.fp8 is not None:
        import torch

        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    modules: dict[str, Any] = {"transformer": transformer}
    for name, slot in _SLOTS[kind].items():
        found = parts.encoders[name]
        inside = encoder_weights(state, name) if found is None else None
        modules[slot] = load_text_encoder(found, inside, index[slot][1], config / slot, dtype)
    own_vae = strip_prefix(state, flow.vae_prefix) if flow.vae_prefix else None
    modules["vae"] = load_flow_vae(parts.vae, own_vae, index["vae"][1], config / "vae", dtype)
    del state
    modules |= _tokenizers(kind, config, parts)
    scheduler_class = getattr(diffusers, index["scheduler"][1])
    modules["scheduler"] = scheduler_class.from_pretrained(config / "scheduler")
    pipeline = getattr(diffusers, IMG2IMG_CLASS[index["_class_name"]])
    return pipeline(**modules), parts


def _file_and_transformer(
    path: Path, flow: FlowFile, config: Path, dtype: torch.dtype
) -> tuple[Tensors, Any]:
    """The file's weights (fp8 cast up) and its transformer; a GGUF file holds only a
    quantized transformer (city96's), which stays quantized."""
    if path.suffix.lower() == GGUF_SUFFIX:
        shapes = {k: v["shape"] for k, v in read_model_layout(path).items()}
        shapes = strip_prefix(shapes, flow.prefix) if flow.prefix else shapes
        return {}, load_transformer(str(path), shapes, flow, config, dtype)
    state = _read(path, dtype)
    weights = _within(state, flow)
    shapes = {k: list(v.shape) for k, v in weights.items()}
    return state, load_transformer(weights, shapes, flow, config, dtype)


def _read(path: Path, dtype: torch.dtype) -> Tensors:
    from safetensors.torch import load_file

    return dequantize(load_file(str(path)), dtype)


def _within(state: Tensors, flow: FlowFile) -> Tensors:
    """The transformer's weights, without the file's prefix."""
    if flow.prefix:
        return strip_prefix(state, flow.prefix)
    others = ("text_encoders.", *VAE_PREFIXES)
    return {k: v for k, v in state.items() if not k.startswith(others)}


def strip_prefix(state: Mapping[str, _V], prefix: str) -> dict[str, _V]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def encoder_weights(state: Tensors, name: str) -> Tensors:
    inside = strip_prefix(state, f"text_encoders.{name}.")
    return strip_prefix(inside, "transformer.") or inside


# ---------------------------------------------------------------------------------------------
# The transformer


def load_transformer(
    weights: Tensors | str,
    shapes: Mapping[str, Sequence[int]],
    flow: FlowFile,
    config: Path,
    dtype: torch.dtype,
) -> Any:
    """The transformer from `weights` (a state dict, or a GGUF file's path, kept quantized
    and computed in `dtype`), its config the shipped one with what the weights' `shapes`
    say overriding it."""
    import diffusers

    settings = json.loads((config / "transformer" / "config.json").read_text())
    settings |= transformer_overrides(group(flow.variant), shapes, settings)
    model_class = getattr(diffusers, settings["_class_name"])
    options: dict[str, Any] = {}
    if isinstance(weights, str):
        options["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "transformer").mkdir()
        (Path(tmp) / "transformer" / "config.json").write_text(json.dumps(settings))
        return model_class.from_single_file(
            weights, config=tmp, subfolder="transformer", local_files_only=True,
            torch_dtype=dtype, **options,
        )  # fmt: skip


def transformer_overrides(
    kind: str, shapes: Mapping[str, Sequence[int]], shipped: dict[str, Any]
) -> dict[str, Any]:
    """Config values the weights decide: depth and input channels (any family); Qwen-Image's
    widths too (its names are diffusers', so any width loads; Flux's converter fixes them)."""
    blocks = block_counts(shapes)
    if kind == "flux":
        return {
            "num_layers": blocks.get("double_blocks", shipped["num_layers"]),
            "num_single_layers": blocks.get("single_blocks", shipped["num_single_layers"]),
            "in_channels": int(shapes["img_in.weight"][1]),
            "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
        }
    if kind == "sd3":
        return {"num_layers": blocks.get("joint_blocks", shipped["num_layers"])}
    head = int(shapes["transformer_blocks.0.attn.norm_q.weight"][0])
    inner, in_channels = (int(n) for n in shapes["img_in.weight"])
    if sum(shipped["axes_dims_rope"]) != head:
        raise ConfigError(
            f"a Qwen-Image transformer with {head}-wide attention heads: only 128 (Qwen-Image's "
            "own) is known"
        )
    patch = int(shipped["patch_size"])
    return {
        "num_layers": blocks.get("transformer_blocks", shipped["num_layers"]),
        "attention_head_dim": head,
        "num_attention_heads": inner // head,
        "joint_attention_dim": int(shapes["txt_in.weight"][1]),
        "in_channels": in_channels,
        "out_channels": int(shapes["proj_out.weight"][0]) // (patch * patch),
    }


# ---------------------------------------------------------------------------------------------
# Text encoders, VAE, tokenizers


def load_text_encoder(
    found: Path | None, weights: Tensors | None, class_name: str, config: Path, dtype: torch.dtype
) -> Any:
    """A text encoder of class `class_name`: a folder (``config.json`` + weights) as it is,
    else a file's (or the checkpoint's) `weights` into the config folder `config`'s model."""
    import transformers

    model_class = getattr(transformers, class_name)
    if found is not None and found.is_dir():
        return model_class.from_pretrained(found, torch_dtype=dtype, local_files_only=True)
    if weights is None:
        assert found is not None
        weights = _read(found, dtype)
    from accelerate import init_empty_weights

    settings = model_class.config_class.from_pretrained(config)
    with init_empty_weights():
        model = model_class(settings)
    _fill(model, weights, dtype, source=found or config.name)
    return model.eval()


def _fill(model: Any, weights: Tensors, dtype: torch.dtype, *, source: object) -> None:
    """`weights` into `model` (built on the meta device) under its own names; what the file
    lacks and the model can do without is made: tied embeddings, CLIP-L's projection in SD 3
    (ComfyUI's clip_l has none: the identity, as ComfyUI uses), an unused LM head."""
    import torch

    wanted = model.state_dict()
    mapped: Tensors = {}
    for key, tensor in weights.items():
        for name in _names(key):
            if name in wanted and name not in mapped:
                mapped[name] = tensor.to(dtype)
                break
    for name, tensor in wanted.items():
        if name in mapped:
            continue
        if name.endswith("text_projection.weight"):
            mapped[name] = torch.eye(tensor.shape[0], tensor.shape[1], dtype=dtype)
    model.load_state_dict(mapped, strict=False, assign=True)
    model.tie_weights()
    if "lm_head.weight" in wanted and "lm_head.weight" not in mapped:
        model.lm_head.weight = model.get_input_embeddings().weight  # never used for images
    empty = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if empty:
        raise ConfigError(
            f"text encoder {source}: its file lacks {len(empty)} weights the model needs "
            f"({', '.join(empty[:3])}…): not the encoder this model uses, or a damaged file"
        )


def _names(key: str) -> list[str]:
    """The names a text-encoder weight may have in a transformers model."""
    names = [key, f"text_model.{key}", key.removeprefix("text_model.")]
    if key.startswith("model."):  # ComfyUI's Qwen2.5-VL: the language model under model.
        names.append("model.language_model." + key.removeprefix("model."))
    if key.startswith("visual."):
        names.append("model." + key)
    return names


def load_flow_vae(
    found: Path | None, weights: Tensors | None, class_name: str, config: Path, dtype: torch.dtype
) -> Any:
    """The VAE: a folder as it is, else a file's or the checkpoint's weights."""
    import diffusers

    vae_class = getattr(diffusers, class_name)
    if found is not None and found.is_dir():
        sub = "vae" if (found / "vae" / "config.json").is_file() else None
        return vae_class.from_pretrained(found, subfolder=sub, torch_dtype=dtype)
    source: Any = weights if weights is not None else None
    if class_name == "AutoencoderKL":  # LDM names, as Flux's ae and SD 3's VAE are saved
        source = source if source is not None else str(found)
        return vae_class.from_single_file(
            source, config=str(config.parent), subfolder="vae", local_files_only=True,
            torch_dtype=dtype,
        )  # fmt: skip
    if source is None:
        assert found is not None
        source = _read(found, dtype)
    model = vae_class.from_config(vae_class.load_config(config))
    if not set(source) <= set(model.state_dict()):  # ComfyUI's Wan-style names
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        source = convert_wan_vae_to_diffusers(source)
    model.load_state_dict(source)
    return model.to(dtype).eval()


def _tokenizers(kind: str, config: Path, parts: FlowParts) -> dict[str, Any]:
    from transformers import AutoTokenizer, CLIPTokenizer

    made: dict[str, Any] = {}
    for slot in ("tokenizer", "tokenizer_2"):
        if (config / slot / "vocab.json").is_file():  # CLIP's, generated (single_file.py)
            made[slot] = CLIPTokenizer.from_pretrained(config / slot)
    assert parts.tokenizer is not None
    made[_BIG_TOKENIZER[kind]] = AutoTokenizer.from_pretrained(parts.tokenizer)
    return made


# ---------------------------------------------------------------------------------------------
# Any single file


def load_file_pipeline(
    path: Path,
    *,
    dtype: torch.dtype,
    search: Search,
    cache_dir: Path | None,
    fp8_storage: bool,
    vae: Path | None = None,
) -> Any:
    """The img2img pipeline of a single-file checkpoint of any family, offline (`vae`: the
    profile's, which a flow family's file is built with instead of looking for one)."""
    found = detect_file(path)
    if not isinstance(found, FlowFile):
        return load_single_file(path, dtype=dtype, cache_dir=cache_dir)
    pipe, _ = load_flow_file(
        path, found, dtype=dtype, search=search, vae=vae, cache_dir=cache_dir,
        fp8_storage=fp8_storage,
    )  # fmt: skip
    return pipe


def file_modules(path: Path, search: Search) -> tuple[str, ...]:
    """Forge's ``Module 1..n`` of a single file: the separate VAE and text-encoder files it
    is painted with (their names without extension); () for a file that needs none."""
    try:
        found = detect_file(path)
    except (ConfigError, OSError):
        return ()
    if not isinstance(found, FlowFile) or found.variant not in LOADABLE:
        return ()
    return tuple(p.stem if p.is_file() else p.name for p in find_parts(path, found, search).modules)


def require_flow_parts(
    path: Path, flow: FlowFile, search: Search, *, vae: Path | None = None
) -> FlowParts:
    """The parts `flow` is loaded with; ConfigError saying what to put where when it cannot
    be loaded as it stands (``check`` and the preflight ask too: names and folders only)."""
    if flow.variant not in LOADABLE:
        raise ConfigError(
            f"{path.name} is a {flow.label}: its single files are not supported yet; use its "
            "diffusers folder (e.g. `img2imgd pull` the hub repo)"
        )
    parts = find_parts(path, flow, search, vae=vae)
    if parts.missing:
        raise ConfigError("; ".join(parts.missing))
    return parts
