"""The script a user with a GPU would write for Flux.1 img2img: load once, loop, save.

bench/plain_gpu.py's counterpart for a Flux.1-dev diffusers folder, run the same way by
bench/gpu.py beside ``img2imgd once``. torch, diffusers and Pillow only, with the settings
the daemon uses for Flux on CUDA: bf16 weights (Flux ships in bf16; fp16 overflows T5),
diffusers' default attention (PyTorch's fused SDPA), TF32 for what stays in fp32, the
flow-matching Euler scheduler of the model, distilled guidance 3.5 in one pass (no true CFG),
and each image painted at its own size (Flux's pipelines otherwise paint at 1024²).
``--offload model`` is diffusers' model CPU offload instead of moving everything to the GPU.

    python bench/plain_flux.py FOLDER INPUT_FOLDER OUTPUT_FOLDER [--offload model] [--device cuda]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import FluxImg2ImgPipeline
from PIL import Image

PROMPT = "a photograph of a cat"  # bench/gpu.py's
STEPS, STRENGTH, GUIDANCE, SEED = 20, 0.75, 3.5, 1234


def load(folder: str, *, device: str, offload: str) -> FluxImg2ImgPipeline:
    pipe = FluxImg2ImgPipeline.from_pretrained(
        folder, torch_dtype=torch.bfloat16, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("folder", "source", "target"):
        parser.add_argument(name)
    parser.add_argument("--offload", choices=("none", "model"), default="none")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    pipe = load(args.folder, device=args.device, offload=args.offload)
    target = Path(args.target)
    target.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(sorted(Path(args.source).glob("*.png"))):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        width, height = image.width // 16 * 16, image.height // 16 * 16
        generator = torch.Generator("cpu").manual_seed(SEED + index)
        result = pipe(
            prompt=PROMPT, image=image, strength=STRENGTH, num_inference_steps=STEPS,
            guidance_scale=GUIDANCE, width=width, height=height, generator=generator,
            max_sequence_length=512,
        )  # fmt: skip
        result.images[0].save(target / path.name)


if __name__ == "__main__":
    main()
