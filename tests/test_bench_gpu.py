"""``make bench-gpu`` (bench/gpu.py): the parts that need no GPU, checked on the CPU.

The benchmark itself runs only where CUDA is; here: its plan and options, its table from
given numbers, its plain exit where there is no CUDA (building nothing), the probe's hook on
the scheduler, and the random full-size checkpoint builder on a tiny model's configs (the
same code path as SD 1.5's and SDXL's, in a second instead of minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import NO_CUDA, Result, Run, format_table, make_inputs, measure, parse_args, plan

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def test_the_default_plan_sweeps_max_batch_and_compiles_both_sides() -> None:
    args = parse_args([])
    assert args.models == ["sd15", "sdxl", "flux"] and args.images == 32
    assert args.batches == [1, 2, 4, 8]
    runs = plan("sd15", args.batches, compile_unet=not args.no_compile)
    assert [r.label for r in runs] == [
        "plain loop",
        "img2imgd, max_batch 1",
        "img2imgd, max_batch 2",
        "img2imgd, max_batch 4",
        "img2imgd, max_batch 8",
        "plain loop, compiled",
        "img2imgd, max_batch 1, compiled",
        "img2imgd, max_batch 8, compiled",
    ]


def test_quick_is_sd15_only_with_fewer_images_and_no_compiling() -> None:
    args = parse_args(["--quick"])
    assert (args.models, args.images, args.batches, args.no_compile) == (["sd15"], 8, [1, 8], True)
    assert len(plan("sd15", args.batches, compile_unet=False)) == 3


def test_an_unknown_model_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--models", "sd15,flux3"])


def test_flux_runs_batches_of_one_and_two_then_model_offload_uncompiled() -> None:
    args = parse_args(["--models", "flux-shallow"])
    runs = plan("flux-shallow", args.batches, compile_unet=not args.no_compile)
    kinds = [(run.daemon, run.max_batch, run.offload, run.compile_unet) for run in runs]
    assert kinds == [(False, 1, "auto", False), (True, 1, "auto", False),
                     (True, 2, "auto", False), (True, 1, "model", False)]  # fmt: skip
    assert runs[-1].label == "img2imgd, max_batch 1, offload model"


def test_the_table_from_given_numbers() -> None:
    gib = 2**30
    stats = {"unet_calls": 150, "image_steps": 600, "unet_seconds": 20.0}
    memory = {"peak_allocated": 3 * gib, "peak_reserved": 4.5 * gib}
    results = [
        Result(Run("sd15", daemon=False), 32, 40.0, {}),
        Result(Run("sd15", daemon=True, max_batch=4), 32, 30.0, {**stats, **memory}),
        Result(Run("sd15", daemon=True, max_batch=8), 32, 0.0, {}, failed="exit status 1"),
        Result(Run("sd15", daemon=True, compile_unet=True), 32, 50.0, {}),
    ]
    lines = format_table(results).splitlines()
    assert lines[0].startswith("| run | wall s | images/s | ratio | UNet it/s |")
    assert lines[2] == "| plain loop | 40.0 | 0.80 | 1.00 | - | - | - | - |"
    # 150 UNet calls in 20 s of GPU time: 7.5 it/s, 30 image-steps/s, 67 % of 30 s.
    want = "| img2imgd, max_batch 4 | 30.0 | 1.07 | 0.75 | 7.50 | 30.0 | 67% | 3.0 / 4.5 |"
    assert lines[3] == want
    assert lines[4] == "| img2imgd, max_batch 8 | failed: exit status 1 | - | - | - | - | - | - |"
    # No compiled plain loop to compare with: no ratio.
    assert lines[5].startswith("| img2imgd, max_batch 1, compiled | 50.0 | 0.64 | - |")


def test_a_flux_table_names_the_transformer() -> None:
    results = [Result(Run("flux", daemon=False), 8, 40.0, {})]
    head = format_table(results, denoiser="transformer").splitlines()[0]
    assert head.startswith("| run | wall s | images/s | ratio | transformer it/s | transformer ")


def test_without_cuda_it_says_so_and_builds_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--cache", str(cache)],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == NO_CUDA
    assert not cache.exists()


def test_the_probe_hooks_the_scheduler_when_it_is_imported(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(
        "import sys\n"
        "assert 'diffusers' not in sys.modules  # the probe imports nothing up front\n"
        "from diffusers import EulerAncestralDiscreteScheduler as S\n"
        "print(S.step.__name__, sys.argv[1:])\n"
    )
    stats = tmp_path / "stats.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_probe.py"), str(stats), str(script), "x"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["timed_step", "['x']"]
    assert json.loads(stats.read_text()) == {}  # no CUDA: nothing measured


def test_the_probe_times_the_flux_transformer_when_it_is_imported(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(
        "from diffusers import EulerAncestralDiscreteScheduler as S\n"
        "from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel as T\n"
        "print(S.step.__name__, T.forward.__name__)\n"
    )
    stats = tmp_path / "stats.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_probe.py"), str(stats), str(script)],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["timed_step", "timed_forward"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_the_flux_row_runs_end_to_end_on_the_cpu_at_toy_widths(tmp_path: Path) -> None:
    """Every run of the Flux row, both sides as whole processes as on the GPU, on a Flux.1
    built by the same builder at toy widths in the full model's place (64 px, one image):
    the plain script and ``img2imgd once`` each write it (on the CPU, offload model says it
    needs a GPU and keeps all on the CPU)."""
    from tests.support.real_flux import FluxShape, build_flux_folder
    from tests.support.real_models import checkpoint_path

    toy = FluxShape(double_blocks=1, single_blocks=1, heads=2, head_width=16, rope=(4, 6, 6),
                    t5_width=64, t5_ff=96, t5_layers=1, t5_heads=4, t5_vocab=1000,
                    clip_width=32, clip_ff=37, clip_layers=2, clip_heads=4, clip_vocab=1000,
                    vae_channels=(8, 8, 8, 8), vae_layers=1, vae_groups=8)  # fmt: skip
    cache = tmp_path / "cache"
    folder = checkpoint_path("flux", cache)
    folder.parent.mkdir(parents=True)
    build_flux_folder(folder, toy)
    inputs = make_inputs(tmp_path / "inputs", 1, 64)
    for run in plan("flux", [1], compile_unet=False):
        result = measure(run, cache, inputs, tmp_path / "work", device="cpu")
        assert result.images == 1 and not result.failed and result.seconds > 0, run.label


@pytest.mark.usefixtures("one_torch_thread")
def test_the_random_checkpoint_builder_writes_a_loadable_single_file(
    tmp_path: Path, state_dir: Path
) -> None:
    import torch

    from daemon.models.builtin import ensure_builtin
    from daemon.models.single_file import load_single_file
    from tests.support.real_weights import build_random_checkpoint, random_modules

    configs = ensure_builtin("tiny-sd", state_dir / "builtin")
    file = build_random_checkpoint(configs, tmp_path / "random.safetensors")
    pipe = load_single_file(file, dtype=torch.float16, config_dir=configs, cache_dir=tmp_path)
    again = random_modules(configs)  # same seed, same weights
    for part in ("unet", "vae", "text_encoder"):
        loaded, built = getattr(pipe, part).state_dict(), getattr(again, part).state_dict()
        assert sorted(loaded) == sorted(built), part
        assert all(torch.equal(loaded[key], built[key]) for key in built), part
