"""A diffusers Flux.1 transformer's weights under the names of BFL's original files (as
ComfyUI, Forge and civitai save Flux): the inverse of diffusers'
``convert_flux_transformer_checkpoint_to_diffusers``, any depth (its widths are BFL's)."""

from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]
_PAIRS = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {  # diffusers (under transformer_blocks.i.) -> BFL (under double_blocks.i.)
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
}
_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
}


def _count(sd: Tensors, prefix: str) -> int:
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith(prefix))


def to_bfl(sd: Tensors, prefix: str = "model.diffusion_model.") -> Tensors:
    out: Tensors = {}
    for ours, theirs in _PAIRS.items():
        for s in ("weight", "bias"):
            if f"{ours}.{s}" in sd:
                out[f"{theirs}.{s}"] = sd[f"{ours}.{s}"]
    for s in ("weight", "bias"):  # diffusers keeps (scale, shift), BFL (shift, scale)
        scale, shift = sd[f"norm_out.linear.{s}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{s}"] = torch.cat([shift, scale])
    for i in range(_count(sd, "transformer_blocks.")):
        p, q = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for s in ("weight", "bias"):
            for ours, theirs in _DOUBLE.items():
                out[f"{q}{theirs}.{s}"] = sd[f"{p}{ours}.{s}"]
            out[f"{q}img_attn.qkv.{s}"] = torch.cat([sd[f"{p}attn.to_{x}.{s}"] for x in "qkv"])
            out[f"{q}txt_attn.qkv.{s}"] = torch.cat(
                [sd[f"{p}attn.add_{x}_proj.{s}"] for x in "qkv"]
            )
        for ours, theirs in _NORMS.items():
            out[f"{q}{theirs}.scale"] = sd[f"{p}{ours}.weight"]
    for i in range(_count(sd, "single_transformer_blocks.")):
        p, q = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for s in ("weight", "bias"):
            out[f"{q}modulation.lin.{s}"] = sd[f"{p}norm.linear.{s}"]
            parts = [sd[f"{p}attn.to_{x}.{s}"] for x in "qkv"] + [sd[f"{p}proj_mlp.{s}"]]
            out[f"{q}linear1.{s}"] = torch.cat(parts)
            out[f"{q}linear2.{s}"] = sd[f"{p}proj_out.{s}"]
        out[f"{q}norm.query_norm.scale"] = sd[f"{p}attn.norm_q.weight"]
        out[f"{q}norm.key_norm.scale"] = sd[f"{p}attn.norm_k.weight"]
    return {prefix + k: v.contiguous() for k, v in out.items()}
