"""Loading a ControlNet: a diffusers folder, or a single file with a shipped config, offline.

A single file is read here (safetensors; a pickle only when the configuration allows
pickles, the resolver's rule, through the tensors-only unpickler), its weights renamed to
diffusers' layout where they are in the original one (diffusers' own
``convert_controlnet_checkpoint``, plus the SDXL size embedding it leaves out), and loaded
strictly into a net built on the meta device from the config :mod:`daemon.models.
controlnet_layout` chose. Nothing here can reach the hub: the config is a local file and no
``from_single_file`` / ``from_pretrained`` lookup runs for a single file. A file whose
weights do not fit the config is a ConfigError that names the file and what did not fit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError
from daemon.models.checkpoints import is_pickle, load_pickle
from daemon.models.controlnet_layout import ControlNetLayout

if TYPE_CHECKING:
    import torch

UNION_CLASS = "ControlNetUnionModel"
_SDXL_SIZE_EMBEDDING = {  # what diffusers' converter leaves out of an SDXL ControlNet
    "label_emb.0.0.": "add_embedding.linear_1.",
    "label_emb.0.2.": "add_embedding.linear_2.",
}
_DEPTH = re.compile(r"^down_blocks\.(\d+)\.attentions\.0\.transformer_blocks\.(\d+)\.")


def net_class(class_name: str) -> Any:
    """diffusers' class for a config's ``_class_name``: the union model, or the plain one."""
    if class_name == UNION_CLASS:
        from diffusers.models.controlnets.controlnet_union import ControlNetUnionModel

        return ControlNetUnionModel
    from diffusers.models.controlnets.controlnet import ControlNetModel

    return ControlNetModel


def load_controlnet_folder(folder: Path, *, dtype: torch.dtype) -> Any:
    """A diffusers ControlNet folder (``config.json`` and its weights), plain or union."""
    config = read_config(folder)
    cls = net_class(str(config.get("_class_name", "")))
    return cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)


def read_config(folder: Path) -> dict[str, Any]:
    file = Path(folder) / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: cannot read a ControlNet config ({exc})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: not a ControlNet config (not a mapping)")
    return config


def load_controlnet_file(
    path: Path, layout: ControlNetLayout, *, config_dir: Path, dtype: torch.dtype
) -> Any:
    """The net in single file `path`, of `layout`, built from ``config_dir/config.json``."""
    import torch

    config = read_config(config_dir)
    if layout.union:
        config["_class_name"] = UNION_CLASS
        config["num_control_type"] = layout.control_types
    state = _weights(path)
    if layout.prefix:
        state = {k.removeprefix(layout.prefix): v for k, v in state.items()}
    if layout.ldm:
        state = _to_diffusers(state, config)
    _fit_depths(config, state)
    cls = net_class(str(config.get("_class_name", "")))
    with torch.device("meta"):
        net = cls.from_config(config)
    state = {k: v.to(dtype) for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False, assign=True)
    left = [name for name, t in (*net.named_parameters(), *net.named_buffers()) if t.is_meta]
    if missing or unexpected or left:
        misfits = [_sample("missing", [*missing, *left]), _sample("unexpected", unexpected)]
        raise ConfigError(
            f"{path}: its weights do not fit the {layout.config_name} ControlNet config "
            f"({'; '.join(m for m in misfits if m)}): a ControlNet of another kind?"
        )
    return net.eval()


def _weights(path: Path) -> dict[str, Any]:
    import torch

    if not is_pickle(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors' own error types
            raise ConfigError(f"{path}: not a readable .safetensors file ({exc})") from exc
    data = load_pickle(path)  # the configuration allows pickles: the resolver checked
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds a {type(data).__name__}, not a dictionary of weights")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _to_diffusers(state: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    converted = convert_controlnet_checkpoint(state, dict(config))
    for key, value in state.items():
        for ldm, diffusers in _SDXL_SIZE_EMBEDDING.items():
            if key.startswith(ldm):
                converted[diffusers + key[len(ldm) :]] = value
    return {k: v for k, v in converted.items() if v is not None}


def _fit_depths(config: dict[str, Any], state: Mapping[str, Any]) -> None:
    """SDXL ControlNets come with 10, 1 or no transformer blocks in the last block (the
    "full", "mid" and "small" ones): the depths the weights have, over the config's."""
    depths = config.get("transformer_layers_per_block")
    if not isinstance(depths, list):
        return
    found: dict[int, int] = {}
    for key in state:
        if match := _DEPTH.match(key):
            block, depth = int(match[1]), int(match[2]) + 1
            found[block] = max(found.get(block, 0), depth)
    for block, types in enumerate(config.get("down_block_types", ())):
        if "CrossAttn" in types and block < len(depths):
            depths[block] = found.get(block, 0)


def _sample(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{what}: {', '.join(keys[:3])}{more}"
