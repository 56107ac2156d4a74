"""img2imgd against the script a user would write, on a CUDA GPU, with full-size models.

``make bench-gpu``: random-weight SD 1.5 at 512x512, SDXL base at 1024x1024 and FLUX.1-dev
at 1024x1024, built once from the configs the daemon ships and FLUX.1-dev's published ones
(tests/support/real_models.py, real_flux.py; same layout, memory and compute as the real
models, offline), 20 steps x 0.75 (15 run), 32 images each: SD with Euler a and CFG 7, Flux
with Euler and distilled guidance 3.5 (one pass a step). Both sides run as whole processes
through bench/gpu_probe.py, one after the other:

* the plain loop (bench/plain_gpu.py: fp16, SDPA, channels-last, TF32, one image per call;
  bench/plain_flux.py for Flux: bf16, SDPA, TF32);
* ``img2imgd once`` on the same files with ``max_batch`` 1, 2, 4 and 8 (Flux: 1 and 2, and
  1 with ``offload: model``, the cost of model CPU offload);
* SD's both again with the UNet compiled (``torch.compile`` / ``compile_unet: true``).

Full-depth Flux needs 34 GB of GPU memory and about 40 GB of RAM and disk to build;
``--models flux-shallow`` is every width of it with 2 + 4 of its 19 + 38 blocks.

It prints, per model, a Markdown table: wall time, images/s, the ratio to the plain loop
(wall time, img2imgd / loop, with the same compile setting), UNet (Flux: transformer)
iterations/s (one iteration = one call of it, for all the images of a call) and
image-steps/s over its GPU time, the share of the wall time it computed, and peak GPU memory.
On a machine without CUDA it says so and exits 0, having built nothing.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu.py [--quick] [--models sd15,sdxl,flux]
        [--images 32] [--batches 1,2,4,8] [--no-compile] [--cache state/real-models]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/gpu.py`: the project's packages too

NO_CUDA = "bench-gpu: no CUDA device here (torch.cuda.is_available() is False): nothing to measure"
STEPS, STRENGTH, CFG, SEED = 20, 0.75, 7.0, 1234
FLUX_GUIDANCE = 3.5  # distilled guidance, as bench/plain_flux.py
PROMPT = "a photograph of a cat"  # the same as bench/plain_gpu.py
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
RUN_TIMEOUT = 3600  # s; compiling SDXL's UNet alone can take minutes


@dataclass(frozen=True)
class Run:
    model: str  # a key of tests.support.real_models.REAL_MODELS
    daemon: bool  # img2imgd once; else the plain loop
    max_batch: int = 1
    compile_unet: bool = False
    offload: str = "auto"  # the daemon's `offload:` (auto: all on the GPU where it fits)

    @property
    def label(self) -> str:
        compiled = ", compiled" if self.compile_unet else ""
        if not self.daemon:
            return f"plain loop{compiled}"
        offload = "" if self.offload == "auto" else f", offload {self.offload}"
        return f"img2imgd, max_batch {self.max_batch}{compiled}{offload}"

    @property
    def flux(self) -> bool:
        return is_flux(self.model)


@dataclass(frozen=True)
class Result:
    run: Run
    images: int
    seconds: float  # the whole process, start to exit
    stats: dict[str, float]  # bench/gpu_probe.py's
    failed: str = ""  # why the run failed; the other runs still go on


class RunFailed(Exception):
    pass


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="SD 1.5 only, 8 images, max_batch 1 and 8, no compiling")  # fmt: skip
    parser.add_argument("--models", default="sd15,sdxl,flux",
                        help="sd15, sdxl, flux, flux-shallow, comma-separated")  # fmt: skip
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batches", default="1,2,4,8", help="the max_batch sweep")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled runs")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where the random checkpoints are built once and kept "
                             "(default: IMG2IMGD_REAL_MODELS or state/real-models)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.images, args.batches, args.no_compile = "sd15", 8, "1,8", True
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    from tests.support.real_models import CHECKPOINTS, FLUX_SHAPES, default_folder

    args.cache = args.cache or default_folder()
    known = [*CHECKPOINTS, *FLUX_SHAPES]
    unknown = sorted(set(args.models) - set(known))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; known: {', '.join(known)}")
    return args


def is_flux(model: str) -> bool:
    return model.startswith("flux")


def plan(model: str, batches: Sequence[int], *, compile_unet: bool) -> list[Run]:
    """The runs for one model, each compiled group after its plain loop (the ratio's base).
    Flux: batches of 1 and 2 at most (1024² images of a 12 B transformer), then model CPU
    offload; not compiled (minutes of compiling for each side)."""
    if is_flux(model):
        runs = [Run(model, daemon=False)]
        runs += [Run(model, daemon=True, max_batch=b) for b in batches if b <= 2]
        return [*runs, Run(model, daemon=True, offload="model")]
    runs = [Run(model, daemon=False), *(Run(model, daemon=True, max_batch=b) for b in batches)]
    if compile_unet:
        runs += [Run(model, daemon=False, compile_unet=True)]
        runs += [Run(model, daemon=True, max_batch=b, compile_unet=True) for b in (1, max(batches))]
    return list(dict.fromkeys(runs))


# ----------------------------------------------------------------------------- the table


def format_table(results: Sequence[Result], *, denoiser: str = "UNet") -> str:
    """The Markdown table of one model's results; ratios against the plain loop with the
    same compile setting (wall time, img2imgd / loop: below 1 the daemon is faster).
    `denoiser` names the network the probe timed (Flux: the transformer)."""
    base = {r.run.compile_unet: r.seconds for r in results if not r.run.daemon and not r.failed}
    head = ("run", "wall s", "images/s", "ratio", f"{denoiser} it/s", f"{denoiser} img-steps/s",
            f"{denoiser} share", "peak GPU GiB (alloc / reserved)")  # fmt: skip
    rows = [head, tuple("---" for _ in head)]
    for result in results:
        run, stats = result.run, result.stats
        if result.failed:
            rows.append((run.label, f"failed: {result.failed}", *("-" for _ in head[2:])))
            continue
        plain = base.get(run.compile_unet)
        ratio = "1.00" if not run.daemon else f"{result.seconds / plain:.2f}" if plain else "-"
        unet = stats.get("unet_seconds") or 0.0
        rows.append((
            run.label,
            f"{result.seconds:.1f}",
            f"{result.images / result.seconds:.2f}",
            ratio,
            f"{stats['unet_calls'] / unet:.2f}" if unet else "-",
            f"{stats['image_steps'] / unet:.1f}" if unet else "-",
            f"{unet / result.seconds:.0%}" if unet else "-",
            _memory(stats),
        ))  # fmt: skip
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _memory(stats: dict[str, float]) -> str:
    if "peak_allocated" not in stats:
        return "-"
    return f"{stats['peak_allocated'] / 2**30:.1f} / {stats['peak_reserved'] / 2**30:.1f}"


# ----------------------------------------------------------------------------- the runs


def cuda_card() -> str | None:
    """The first CUDA device's name, or None where there is none (CUDA is not initialised)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def make_inputs(folder: Path, count: int, size: int) -> Path:
    from PIL import Image

    from tests.support.workspace import DATA

    folder.mkdir(parents=True, exist_ok=True)
    sources = [DATA / "chelsea.png", DATA / "astronaut.png"]
    for index in range(count):
        with Image.open(sources[index % 2]) as image:
            square = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        square.save(folder / f"img_{index:03d}.png")
    return folder


def probed(command: list[str], work: Path) -> tuple[float, dict[str, float]]:
    """Run `command` (argv after ``python``) through the probe: wall seconds and its stats."""
    stats_file = work / "probe.json"
    stats_file.unlink(missing_ok=True)
    probe = [sys.executable, str(ROOT / "bench" / "gpu_probe.py"), str(stats_file), *command]
    started = time.perf_counter()
    done = subprocess.run(probe, cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        raise RunFailed(f"exit status {done.returncode}")
    return seconds, json.loads(stats_file.read_text()) if stats_file.is_file() else {}


Timed = tuple[Path, float, dict[str, float]]  # the outputs' folder, wall seconds, probe stats


def run_plain(
    run: Run, checkpoint: Path, config: Path | None, inputs: Path, work: Path,
    *, device: str = "cuda",
) -> Timed:  # fmt: skip
    out = work / "plain-out"
    shutil.rmtree(out, ignore_errors=True)
    if run.flux:  # a diffusers folder: its own configs
        command = [str(ROOT / "bench" / "plain_flux.py"), str(checkpoint), str(inputs), str(out),
                   "--device", device]  # fmt: skip
    else:
        command = [str(ROOT / "bench" / "plain_gpu.py"), str(checkpoint), str(config),
                   str(inputs), str(out), *(["--xl"] if run.model == "sdxl" else []),
                   *(["--compile"] if run.compile_unet else [])]  # fmt: skip
    return out, *probed(command, work)


def run_daemon(
    run: Run, checkpoint: Path, inputs: Path, work: Path, cache: Path, *, device: str = "cuda"
) -> Timed:
    """``img2imgd once`` on a fresh inbox, the checkpoint found by name in ``models_dir``."""
    from tests.support.real_models import REAL_MODELS
    from tests.support.workspace import Workspace

    size = REAL_MODELS[run.model].size
    profile = {"model": checkpoint.stem, "prompt": PROMPT, "sampler_name": "Euler a",
               "steps": STEPS, "denoising_strength": STRENGTH, "cfg_scale": CFG, "seed": SEED,
               "max_pixels": size * size}  # fmt: skip
    if run.flux:  # as bench/plain_flux.py: one pass a step at distilled guidance 3.5
        profile.update(sampler_name="Euler", cfg_scale=1.0, distilled_cfg_scale=FLUX_GUIDANCE)
    root = work / "daemon"
    shutil.rmtree(root, ignore_errors=True)
    ws = Workspace(root, cache, profile_base=profile, settings_base={}).create()
    ws.profile("p")
    shutil.copytree(inputs, ws.inbox / "p", dirs_exist_ok=True)
    config = ws.config_file(device=device, models_dir=cache, max_batch=run.max_batch,
                            compile_unet=run.compile_unet, offload=run.offload)  # fmt: skip
    for shared in ("single-file-configs", "tokenizers"):  # generated once, as for a user
        if (cache / shared).is_dir():
            (ws.state / shared).symlink_to(cache / shared, target_is_directory=True)
    return ws.outbox / "p", *probed(["-m", "daemon", "--config", str(config), "once"], work)


def measure(run: Run, cache: Path, inputs: Path, work: Path, *, device: str = "cuda") -> Result:
    from daemon.models.single_file import ensure_config_dir
    from tests.support.real_models import REAL_MODELS, ensure_random_checkpoint

    checkpoint = ensure_random_checkpoint(run.model, cache)
    config = None
    if not run.flux:
        config = ensure_config_dir(REAL_MODELS[run.model].architecture, cache)  # type: ignore[arg-type]
    if run.daemon:
        out, seconds, stats = run_daemon(run, checkpoint, inputs, work, cache, device=device)
    else:
        out, seconds, stats = run_plain(run, checkpoint, config, inputs, work, device=device)
    count = len(list(inputs.glob("*.png")))
    made = len(list(out.glob("*.png"))) if out.is_dir() else 0
    if made != count:
        raise RunFailed(f"{made} of {count} images written")
    return Result(run, count, seconds, stats)


def bench_model(model: str, args: argparse.Namespace, work: Path) -> list[Result]:
    from tests.support.real_models import REAL_MODELS, ensure_random_checkpoint

    spec = REAL_MODELS[model]
    started = time.monotonic()
    checkpoint = ensure_random_checkpoint(model, args.cache)
    files = [checkpoint] if checkpoint.is_file() else sorted(checkpoint.rglob("*.safetensors"))
    print(f"{model}: {checkpoint} ({sum(f.stat().st_size for f in files) / 1e9:.2f} GB, "
          f"ready in {time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    for path in files:  # into the page cache: no run pays the first read
        with path.open("rb") as file:
            while file.read(1 << 26):
                pass
    inputs = make_inputs(work / f"{model}-inputs", args.images, spec.size)
    results = []
    for run in plan(model, args.batches, compile_unet=not args.no_compile):
        try:
            results.append(measure(run, args.cache, inputs, work))
        except (RunFailed, subprocess.TimeoutExpired) as exc:
            results.append(Result(run, args.images, 0.0, {}, failed=str(exc) or "timed out"))
        print(f"  {run.label}: {results[-1].failed or f'{results[-1].seconds:.1f} s'}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    card = cuda_card()
    if card is None:
        print(NO_CUDA)
        return 0
    import diffusers
    import torch

    versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    setup = (f"{args.images} images, {STEPS} steps x {STRENGTH}; SD: Euler a, CFG {CFG}; "
             f"Flux: Euler, distilled guidance {FLUX_GUIDANCE}")  # fmt: skip
    print(f"{card}; {versions}; {setup}", flush=True)
    from tests.support.real_models import REAL_MODELS

    with tempfile.TemporaryDirectory(prefix="img2imgd-gpu-") as tmp:
        tables = [
            f"\n{model} at {REAL_MODELS[model].size}x{REAL_MODELS[model].size}, {card}\n\n"
            + format_table(
                bench_model(model, args, Path(tmp)),
                denoiser="transformer" if is_flux(model) else "UNet",
            )
            for model in args.models
        ]
    print("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
