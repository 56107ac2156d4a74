"""The script a user would write instead of img2imgd: load the pipeline once, loop, save.

Run as a whole process by bench/whole.py, beside ``img2imgd once`` on the same files. It
uses nothing of img2imgd: torch, diffusers, Pillow and (for a video) PyAV only.

    python bench/plain_loop.py images|video MODEL_FOLDER INPUT OUTPUT_FOLDER
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from diffusers import AutoPipelineForImage2Image, EulerAncestralDiscreteScheduler
from PIL import Image

PROMPT = "a test"
STEPS, STRENGTH, CFG, SEED = 20, 0.5, 7.0, 1234


def load(folder: str) -> object:
    pipe = AutoPipelineForImage2Image.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def paint(pipe: object, image: Image.Image) -> Image.Image:
    generator = torch.Generator("cpu").manual_seed(SEED)
    result = pipe(  # type: ignore[operator]
        prompt=PROMPT, image=image, strength=STRENGTH, num_inference_steps=STEPS,
        guidance_scale=CFG, generator=generator,
    )  # fmt: skip
    return result.images[0]


def images(pipe: object, source: Path, target: Path) -> None:
    for path in sorted(p for p in source.rglob("*.png")):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        paint(pipe, image).save(out)


def video(pipe: object, source: Path, target: Path) -> None:
    import av

    target.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as reader:
        stream = reader.streams.video[0]
        rate = stream.average_rate
        frames = [frame.to_image() for frame in reader.decode(stream)]
    with av.open(str(target / source.name), "w") as writer:
        out = writer.add_stream("libx264", rate=rate)
        out.width, out.height = frames[0].size
        out.pix_fmt = "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_image(paint(pipe, image))
            writer.mux(out.encode(frame))
        writer.mux(out.encode(None))


if __name__ == "__main__":
    mode, folder, source, target = sys.argv[1:5]
    started = time.perf_counter()
    pipe = load(folder)
    loaded = time.perf_counter()
    (images if mode == "images" else video)(pipe, Path(source), Path(target))
    # For bench/whole.py: the painting alone, the pure compute the daemon is measured against.
    print(f"load={loaded - started:.3f} painting={time.perf_counter() - loaded:.3f}")
