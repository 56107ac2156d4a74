"""The script a user with a GPU would write instead of img2imgd: load once, loop, save.

Run as a whole process by bench/gpu.py, beside ``img2imgd once`` on the same files. It uses
nothing of img2imgd: torch, diffusers and Pillow only. It gets the settings the daemon uses
on CUDA, so that the comparison is fair: fp16 weights, diffusers' default attention
(PyTorch's fused SDPA), the UNet in channels-last memory format, TF32 for what stays in fp32,
and with ``--compile`` the UNet through ``torch.compile`` as ``compile_unet: true`` does.
Seeds are drawn on a CPU generator, as the daemon draws them. ``CONFIG_FOLDER`` is a local
diffusers folder of the checkpoint's architecture (configs and tokenizers), so nothing is
downloaded.

    python bench/plain_gpu.py CHECKPOINT CONFIG_FOLDER INPUT_FOLDER OUTPUT_FOLDER [--xl] [--compile]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

PROMPT = "a photograph of a cat"
STEPS, STRENGTH, CFG, SEED = 20, 0.75, 7.0, 1234


def load(checkpoint: str, config: str, *, xl: bool, compile_unet: bool) -> object:
    options: dict[str, object] = {"config": config, "local_files_only": True}
    if xl:
        pipe = StableDiffusionXLImg2ImgPipeline.from_single_file(
            checkpoint, torch_dtype=torch.float16, add_watermarker=False, **options
        )
    else:
        pipe = StableDiffusionImg2ImgPipeline.from_single_file(
            checkpoint, torch_dtype=torch.float16, safety_checker=None,
            requires_safety_checker=False, **options,
        )  # fmt: skip
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    pipe.unet.to(memory_format=torch.channels_last)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=False)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("checkpoint", "config", "source", "target"):
        parser.add_argument(name)
    parser.add_argument("--xl", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    pipe = load(args.checkpoint, args.config, xl=args.xl, compile_unet=args.compile)
    target = Path(args.target)
    target.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(sorted(Path(args.source).glob("*.png"))):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        generator = torch.Generator("cpu").manual_seed(SEED + index)
        result = pipe(  # type: ignore[operator]
            prompt=PROMPT, image=image, strength=STRENGTH, num_inference_steps=STEPS,
            guidance_scale=CFG, generator=generator,
        )  # fmt: skip
        result.images[0].save(target / path.name)


if __name__ == "__main__":
    main()
