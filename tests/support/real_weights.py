"""The random full-size weights of :mod:`tests.support.real_models`, in users' layouts.

Each builder writes one thing as users get it: a single-file checkpoint in the original
(LDM) layout, a diffusers folder as the hub's fp16 download leaves it, a kohya LoRA as
civitai ships it, a VAE file as ``vae-ft-mse-840000-ema-pruned.safetensors``. Same seed,
same bytes. Memory: modules are built in fp32 (torch's initialisers) and halved at once, one
module at a time, and files are written by the streaming writer, so the peak is one fp32
module plus the fp16 rest (about 12 GB for SDXL, whose UNet alone is 10 GB in fp32).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tests.support.ldm import controlnet_to_ldm, vae_to_ldm, write_ldm_checkpoint
from tests.support.safetensors_stream import save_streaming

SEED = 0
V_SIDECAR_ARCHITECTURES = frozenset({"sd2-v"})
"""Architectures whose files carry A1111's v-prediction sidecar yaml."""

# A1111's configs/v2-inference-v.yaml, the sidecar an SD 2.x 768-v file is shipped with; the
# daemon reads `parameterization: "v"` from it (the rest is what A1111 reads, kept whole).
V2_INFERENCE_V_YAML = """\
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 64
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_head_channels: 64
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [ 1, 2, 4, 4 ]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""

# kohya's LoRA (networks.lora) on SD 1.x: every Linear and 1x1 conv of the UNet's
# transformers, and the text encoder's attention and MLP.
LORA_UNET_TARGETS = re.compile(
    r"(to_[qkv]|to_out\.0|ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out)$"
)
LORA_TE_TARGETS = re.compile(r"(q_proj|k_proj|v_proj|out_proj|fc1|fc2)$")


def build_random_checkpoint(config_dir: Path, path: Path) -> Path:
    """Write a random-weight fp16 single-file checkpoint of the architecture in `config_dir`
    (a diffusers folder's configs: ``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``
    for SDXL). SD 2.x's OpenCLIP text encoder is written as such."""
    open_clip = "sd2" in Path(config_dir).name
    return write_ldm_checkpoint(random_modules(Path(config_dir)), path, open_clip=open_clip)


def write_v_sidecar(checkpoint: Path) -> Path:
    """The ``<stem>.yaml`` beside `checkpoint` that declares it v-prediction, as A1111's."""
    sidecar = checkpoint.with_suffix(".yaml")
    sidecar.write_text(V2_INFERENCE_V_YAML, encoding="utf-8")
    return sidecar


def build_diffusers_folder(config_dir: Path, folder: Path) -> Path:
    """A diffusers folder as ``hf download <repo> --include "*.fp16.safetensors" "*.json"
    "*.txt"`` leaves it: the configs, scheduler and tokenizers of `config_dir` (a complete
    local config folder, see daemon.models.single_file.ensure_config_dir), and per component
    one ``<name>.fp16.safetensors`` (the text encoders' keys under ``text_model.``, as the
    hub's files have them)."""
    shutil.copytree(config_dir, folder)
    modules = random_modules(config_dir)
    for name, module in vars(modules).items():
        state = module.state_dict()
        if name.startswith("text_encoder"):
            weights = "model.fp16.safetensors"
            state = {k if k.startswith("text_") else f"text_model.{k}": v for k, v in state.items()}
        else:
            weights = "diffusion_pytorch_model.fp16.safetensors"
        save_streaming(state, folder / name / weights, metadata={"format": "pt"})
    return folder


def build_vae_file(config_dir: Path, path: Path) -> Path:
    """A full-size VAE in the original layout without prefix, fp32 (335 MB for SD's), as
    ``vae-ft-mse-840000-ema-pruned.safetensors``. Its own seed: not the checkpoint's VAE."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(SEED + 1)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae")).eval()
    return save_streaming(vae_to_ldm(vae), path)


def build_controlnet_file(config_dir: Path, path: Path) -> Path:
    """A ControlNet of `config_dir`'s architecture (the shipped ``controlnet-sd1``: 361 M
    parameters) as lllyasviel's files: the original layout under ``control_model.``, fp16.
    Its zero convolutions are random too, so that it steers (a real one's are trained)."""
    from diffusers.models.controlnets.controlnet import ControlNetModel

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(SEED + 2)
        net = ControlNetModel.from_config(ControlNetModel.load_config(config_dir)).eval()
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.01)
        net = net.half()
    state = {f"control_model.{k}": v for k, v in controlnet_to_ldm(net).items()}
    return save_streaming(state, path)


def build_lora_file(config_dir: Path, path: Path, *, rank: int = 128) -> Path:
    """A kohya LoRA of rank `rank` for `config_dir`'s UNet and text encoder, fp16, as civitai
    ships them (``lora_unet_…`` / ``lora_te_…``, ``lora_down``/``lora_up``/``alpha``; about
    150 MB at rank 128 for SD 1.5). Only the shapes of the targets are needed, so the
    models are built on the meta device (no memory); the LoRA's weights are random, small
    enough that the picture changes without overflowing."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(config_dir / "unet")
        )
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    targets = [
        (unet, LORA_UNET_TARGETS, "lora_unet_"),
        (text_encoder, LORA_TE_TARGETS, "lora_te_text_model_"),
    ]
    generator = torch.Generator().manual_seed(SEED + 2)
    alpha = rank / 2
    state: dict[str, torch.Tensor] = {}
    for model, pattern, prefix in targets:
        for name, module in model.named_modules():
            if not pattern.search(name) or not hasattr(module, "weight"):
                continue
            out_features, in_features, *kernel = module.weight.shape
            base = prefix + name.removeprefix("text_model.").replace(".", "_")
            down = torch.randn(rank, in_features, *kernel, generator=generator) / in_features**0.5
            up = torch.randn(out_features, rank, *kernel, generator=generator) * 1e-3
            state[f"{base}.lora_down.weight"] = down.half()
            state[f"{base}.lora_up.weight"] = up.half()
            state[f"{base}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1",
    }
    return save_streaming(state, path, metadata=metadata)


def random_modules(config_dir: Path) -> SimpleNamespace:
    """The UNet, VAE and text encoder(s) of `config_dir`'s architecture with random weights,
    in fp16. Each is halved as soon as it is built, so the peak is one fp32 module at a time."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def half(module: Any) -> Any:
        return module.to(torch.float16).eval()

    parts: dict[str, Any] = {}
    # fork_rng: seeding must not disturb the random state of the process that asked for it.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(SEED)
        unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
        parts["unet"] = half(UNet2DConditionModel.from_config(unet_config))
        parts["vae"] = half(
            AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        )
        text = CLIPTextConfig.from_pretrained(config_dir / "text_encoder")
        parts["text_encoder"] = half(CLIPTextModel(text))
        if (config_dir / "text_encoder_2").is_dir():
            text_2 = CLIPTextConfig.from_pretrained(config_dir / "text_encoder_2")
            parts["text_encoder_2"] = half(CLIPTextModelWithProjection(text_2))
    return SimpleNamespace(**parts)
