"""What prompt editing, alternation and AND cost: time per image and text-encoder calls.

Not a test: it prints a table. The built-in tiny model on the CPU, one warm pipeline, the
same image, seed and settings for every row; only the prompt changes. The ratios are to
the plain prompt of the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/prompt_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from PIL import Image

from daemon.config.profiles import Profile
from daemon.engines.diffusion import Canvas, DiffusionEngine
from daemon.libraries import quiet_libraries
from daemon.render.cache import ModelCache
from tests.support.workspace import DATA

SIZE = 256
SETTINGS = {"model": "builtin:tiny-sd", "steps": 20, "denoising_strength": 0.75,
            "sampler_name": "Euler a", "cfg_scale": 7}  # fmt: skip
ROWS = [
    ("plain", "a red fox in the snow, (masterpiece:1.2)"),
    ("edit [a:b:0.5]", "a [red fox:blue car:0.5] in the snow, (masterpiece:1.2)"),
    ("alternation [a|b]", "a [red fox|blue car] in the snow, (masterpiece:1.2)"),
    ("AND, 2 parts", "a red fox in the snow AND a blue car:0.6"),
    ("AND, 3 parts + edit", "a red fox AND a blue car:0.6 AND [snow:rain:0.3]:0.4"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed images per row (median)")
    args = parser.parse_args()
    quiet_libraries()
    import torch

    models = ModelCache(models_dir=None, state_dir=Path(tempfile.mkdtemp()), device="cpu")
    engine = DiffusionEngine(models)
    pipe = models.pipeline(SETTINGS["model"], "img2img")
    encoder_calls: list[int] = []
    pipe.text_encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    settings = Profile(**SETTINGS)

    def paint(prompt: str, seed: int) -> None:
        engine.paint(Canvas(image, None), settings, width=SIZE, height=SIZE, seed=seed,
                     prompt=prompt, negative_prompt="lowres, blurry")  # fmt: skip

    paint("warming up", 0)  # the first call at a size is slower (oneDNN set-up)
    print(f"{SIZE}x{SIZE}, {SETTINGS['steps']} steps at denoising "
          f"{SETTINGS['denoising_strength']}, {args.runs} images a row, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'prompt':<22}{'s/image':>9}{'× plain':>9}{'encoder calls':>15}")
    base = 0.0
    for label, prompt in ROWS:
        before = len(encoder_calls)
        times = []
        for run in range(args.runs):
            start = time.perf_counter()
            paint(prompt, run)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        base = base or median
        calls = len(encoder_calls) - before
        print(f"{label:<22}{median:>9.3f}{median / base:>9.2f}{calls:>15}")
    print("encoder calls: over all images of a row; each distinct text once, then cached")
    print("(the negative was encoded by the warm-up)")


if __name__ == "__main__":
    main()
