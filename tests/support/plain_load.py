"""The script a user would write to run a checkpoint on a CPU, as a whole process to measure.

What the daemon is compared with in memory (tests/test_real_memory.py): diffusers'
``from_single_file`` with a local config folder, fp32 (the daemon's dtype on a CPU), one
small image, nothing of img2imgd. It prints ``plain: loaded in N s`` once the pipeline is
ready, the moment its resident memory "with the model loaded" is read.

    python tests/support/plain_load.py CHECKPOINT CONFIG_FOLDER INPUT OUTPUT [--xl]
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from PIL import Image

SIDE, STEPS, STRENGTH, SEED = 64, 4, 0.5, 1234


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("checkpoint", "config", "source", "target"):
        parser.add_argument(name)
    parser.add_argument("--xl", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    options = {"config": args.config, "local_files_only": True, "torch_dtype": torch.float32}
    if args.xl:
        pipe = StableDiffusionXLImg2ImgPipeline.from_single_file(
            args.checkpoint, add_watermarker=False, **options
        )
    else:
        pipe = StableDiffusionImg2ImgPipeline.from_single_file(
            args.checkpoint, safety_checker=None, requires_safety_checker=False, **options
        )
    pipe.set_progress_bar_config(disable=True)
    print(f"plain: loaded in {time.monotonic() - started:.1f} s", flush=True)
    with Image.open(args.source) as opened:
        image = opened.convert("RGB").resize((SIDE, SIDE))
    result = pipe(
        prompt="a test", image=image, strength=STRENGTH, num_inference_steps=STEPS,
        generator=torch.Generator("cpu").manual_seed(SEED),
    )  # fmt: skip
    result.images[0].save(args.target)


if __name__ == "__main__":
    main()
