"""Real LoRA files for the tiny model: made with peft, saved in kohya's layout (civitai's)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def _kohya(peft_state: dict[str, torch.Tensor], prefix: str, alpha: float) -> dict[str, Any]:
    """peft's ``<module>.lora_A.weight`` → kohya's ``<prefix><module_>.lora_down.weight``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in peft_state.items():
        module, kind, _ = key.rsplit(".", 2)
        # transformers 5's CLIPTextModel has no `text_model.` level (its ...WithProjection
        # still has); kohya's names always have it, in the prefix.
        base = prefix + module.removeprefix("text_model.").replace(".", "_")
        part = "lora_down" if kind == "lora_A" else "lora_up"
        out[f"{base}.{part}.weight"] = value.detach().contiguous()
        out[f"{base}.alpha"] = torch.tensor(float(alpha))
    return out


class LoraMaker:
    """Makes rank-4 LoRAs for the tiny model with peft, saved as kohya's trainer would."""

    def __init__(self, folder: Path) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        self.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")

    def make(self, seed: int, *, unet: bool = True, te: bool = True) -> dict[str, Any]:
        parts = [(self.unet, UNET_TARGETS, "lora_unet_")] if unet else []
        parts += [(self.text_encoder, TE_TARGETS, "lora_te_text_model_")] if te else []
        return peft_lora(seed, parts)


def peft_lora(seed: int, parts: list[tuple[Any, list[str], str]]) -> dict[str, Any]:
    """A LoRA on each ``(model, target modules, kohya prefix)``, in kohya's layout."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    state: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for base, targets, prefix in parts:
            # init_lora_weights=False: random, non-zero up weights (peft's default zeros
            # them, which would make a LoRA that changes nothing).
            config = LoraConfig(r=4, lora_alpha=2, target_modules=targets, init_lora_weights=False)
            model = inject_adapter_in_model(config, copy.deepcopy(base))
            state |= _kohya(get_peft_model_state_dict(model), prefix, 2)
    return state


def write(path: Path, data: Any, *, pickle: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if pickle:
        torch.save(data, path)
    else:
        save_file(data, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def transformer_lora(folder: Path, seed: int) -> dict[str, Any]:
    """A rank-4 LoRA on the attention of a flow model's transformer (``folder/transformer``),
    in diffusers' layout (``transformer.<module>.lora_A.weight``), as ai-toolkit saves it."""
    from diffusers import AutoModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    base = AutoModel.from_pretrained(str(folder / "transformer"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                            init_lora_weights=False)  # fmt: skip
        model = inject_adapter_in_model(config, copy.deepcopy(base))
        state = get_peft_model_state_dict(model)
    return {f"transformer.{key}": value.detach().contiguous() for key, value in state.items()}


def kohya_flux_lora(seed: int, *, width: int = 32, rank: int = 4) -> dict[str, Any]:
    """A LoRA on a Flux transformer's double blocks in kohya's layout (BFL module names,
    ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``), as kohya's sd-scripts and
    most civitai Flux LoRAs save it. Double blocks only: diffusers' converter splits the
    single blocks' fused projection at Flux's full width (3072), which a tiny model lacks."""
    shapes = {  # (out, in) of each BFL linear at `width` (heads × head dim)
        "img_attn_qkv": (3 * width, width), "txt_attn_qkv": (3 * width, width),
        "img_attn_proj": (width, width), "txt_attn_proj": (width, width),
    }  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for module, (out_dim, in_dim) in shapes.items():
        base = f"lora_unet_double_blocks_0_{module}"
        state[f"{base}.lora_down.weight"] = torch.randn(rank, in_dim, generator=generator)
        state[f"{base}.lora_up.weight"] = torch.randn(out_dim, rank, generator=generator) * 0.1
        state[f"{base}.alpha"] = torch.tensor(float(rank))
    return state
