"""Golden set: fixed inputs through the real daemon must give the recorded pixels and text.

Why: a refactor that moves code around must not change a single output pixel or a word of
the parameters text. Each case drops real files into a profile inbox, runs the daemon once
(``Daemon(..., watch=False).run_once()``, as ``img2imgd once`` does) on the tiny built-in
models with fixed seeds, and compares every file in the profile's outbox with the recording
in ``tests/data/golden/``:

* images: the SHA-256 of the decoded RGB pixels and the parameters the file carries
  (``index.json``), with a copy of the pixels (``<case>/<name>``) to diagnose a failure and
  to compare against on another CPU;
* text (``.txt``, ``.json``): the exact text, after :func:`normalise` (temporary paths);
* videos: frame count, size and rate only (lossy H.264 bytes depend on the encoder build;
  the repainted frames themselves are compared through ``keep_frames``).

Exact pixel equality is asserted when the recording was made on the same platform
(:func:`platform_fingerprint`). Elsewhere float results may differ in the last bits, so
images may then differ by at most ``TOLERANCE`` levels (a warning says so) and JSON numbers
by a relative 1e-4; text must still be equal.

Determinism: torch runs on one thread (the ``one_torch_thread`` fixture) and each case's
daemon makes its own model cache, so results depend neither on the thread count nor on what
other tests did to the session's shared pipeline. Recorded twice: byte-identical.

Re-record (after an intended change of output, on purpose only):

    IMG2IMGD_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py

This file uses only the daemon's public entry points (``Daemon``, ``Settings`` through
``workspace.settings()``) and files on disk, and builds its own inputs (video, LoRA, PNG with
parameters) so that it survives refactors of the package and of the other tests.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml
from PIL import Image, PngImagePlugin

from daemon.ops.service import Daemon

if TYPE_CHECKING:
    from tests.conftest import Workspace

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
INDEX = GOLDEN / "index.json"
RECORD = os.environ.get("IMG2IMGD_RECORD_GOLDEN", "") not in ("", "0")
TOLERANCE = 2  # levels of 255, only when the recording was made on another platform
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".gif")
TEXT_SUFFIXES = (".txt", ".json")

# torch's thread count changes how float sums are split: with 2 threads instead of 1, some
# pixels come out 1 level off. One thread, as recorded (and faster on a busy 2-core machine).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every key spelled out here rather than taken from conftest's fast defaults, which may change
# for reasons of their own: the recording depends on these values only.
BASE: dict[str, Any] = {
    "model": "builtin:tiny-sd",
    "prompt": "a photo of an astronaut, highly detailed",
    "negative_prompt": "blurry, lowres",
    "steps": 4,
    "cfg_scale": 7.0,
    "denoising_strength": 0.5,
    "max_pixels": 64 * 64,
    "seed": 1234,
    "sampler_name": "Euler",
}
INPAINT: dict[str, Any] = {**BASE, "task": "inpaint", "denoising_strength": 0.75}
INTERROGATE_CLIP: dict[str, Any] = {
    "task": "interrogate",
    "interrogator": "clip",
    "model": "builtin:tiny-interrogator",
    "caption_min_length": 4,  # short captions and lists keep the case fast
    "caption_max_length": 8,
    "dict_limit": 50,
}
INTERROGATE_TAGS: dict[str, Any] = {
    "task": "interrogate",
    "interrogator": "deepbooru",
    "model": "builtin:tiny-tagger",
    "threshold": 0.2,  # low enough that several tags pass on random weights
}
PNG_PARAMETERS = (
    "a red fox in the snow, (masterpiece:1.2)\n"
    "Negative prompt: ugly\n"
    "Steps: 4, Sampler: Euler a, CFG scale: 5.5, Seed: 777, "
    "Size: 64x64, Model hash: 0123456789, Model: elsewhere, Denoising strength: 0.6, "
    "Version: v1.10.1"
)


# --------------------------------------------------------------------------- input makers


def _copy(name: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / name, target)


def _astronaut_crops(count: int, size: tuple[int, int]) -> list[Image.Image]:
    """Frames of a little pan across the astronaut photo."""
    photo = Image.open(DATA / "astronaut.png").convert("RGB")
    width = photo.width * 3 // 4
    return [
        photo.crop((40 * i, 64, 40 * i + width, 64 + width * size[1] // size[0])).resize(
            size, Image.Resampling.LANCZOS
        )
        for i in range(count)
    ]


def _chelsea_crops(count: int, size: tuple[int, int]) -> list[Image.Image]:
    photo = Image.open(DATA / "chelsea.png").convert("RGB")
    width = photo.height * size[0] // size[1]
    return [
        photo.crop((12 * i, 0, 12 * i + width, photo.height)).resize(size, Image.Resampling.LANCZOS)
        for i in range(1, count + 1)
    ]


def _write_video(path: Path, frames: list[Image.Image], fps: int) -> None:
    """A video with PNG-coded frames: lossless, so the daemon decodes exactly these pixels
    whatever FFmpeg build made or reads it (H.264 input would tie the inputs to x264)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as output:
        stream = output.add_stream("png", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "rgb24"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))


# The attention layers of builtin:tiny-sd that the LoRA patches, in kohya's names (diffusers'
# module path with "_" for ".", after lora_unet_ / lora_te_): every transformer block of the
# UNet with its projections as (name, in width, out width), and the text encoder's 3 layers.
_UNET_BLOCKS = [
    "down_blocks_1_attentions_0",
    "down_blocks_1_attentions_1",
    "mid_block_attentions_0",
    "up_blocks_0_attentions_0",
    "up_blocks_0_attentions_1",
    "up_blocks_0_attentions_2",
]
_UNET_PROJECTIONS = [
    ("attn1_to_q", 64, 64), ("attn1_to_k", 64, 64), ("attn1_to_v", 64, 64),
    ("attn1_to_out_0", 64, 64), ("attn2_to_q", 64, 64), ("attn2_to_k", 32, 64),
    ("attn2_to_v", 32, 64), ("attn2_to_out_0", 64, 64),
]  # fmt: skip
_TE_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "out_proj"]
_LORA_RANK = 4


def _write_lora(path: Path) -> None:
    """A rank-4 LoRA for builtin:tiny-sd in kohya's key layout (the layout of civitai files).

    Weights from numpy's seeded generator, which gives the same numbers on every platform and
    version (torch's vectorised randn and peft's initialisers do not promise that): the file,
    and so its hash in the infotext, is the same bytes everywhere.
    """
    from safetensors.numpy import save_file

    rng = np.random.default_rng(20240601)
    tensors: dict[str, np.ndarray] = {}

    def layer(name: str, fan_in: int, fan_out: int) -> None:
        down = rng.standard_normal((_LORA_RANK, fan_in)) / math.sqrt(fan_in)
        up = rng.standard_normal((fan_out, _LORA_RANK)) * 0.5
        tensors[f"{name}.lora_down.weight"] = down.astype(np.float32)
        tensors[f"{name}.lora_up.weight"] = up.astype(np.float32)
        tensors[f"{name}.alpha"] = np.array(float(_LORA_RANK), dtype=np.float32)

    for block in _UNET_BLOCKS:
        for projection, fan_in, fan_out in _UNET_PROJECTIONS:
            layer(f"lora_unet_{block}_transformer_blocks_0_{projection}", fan_in, fan_out)
    for index in range(3):
        for projection in _TE_PROJECTIONS:
            layer(f"lora_te_text_model_encoder_layers_{index}_self_attn_{projection}", 32, 32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    profile: dict[str, Any]
    inputs: Callable[[Path, Path], dict[str, Any]]
    """Fills the profile's inbox folder (1st argument; the workspace root is the 2nd) and
    returns settings for img2imgd.yaml beyond the workspace's."""


def _image_only(folder: Path, root: Path) -> dict[str, Any]:
    _copy("astronaut.png", folder / "astronaut.png")
    return {}


def _with_sketch(folder: Path, root: Path) -> dict[str, Any]:
    _copy("astronaut.sketch.png", folder / "astronaut.sketch.png")  # companion first
    _copy("astronaut.png", folder / "astronaut.png")
    return {}


def _with_mask(folder: Path, root: Path) -> dict[str, Any]:
    _copy("astronaut.mask.png", folder / "astronaut.mask.png")
    _copy("astronaut.png", folder / "astronaut.png")
    return {}


def _small_with_mask(folder: Path, root: Path) -> dict[str, Any]:
    """Only-masked pastes the result back into the full-size input: a small input keeps the
    recorded image small (and the crop still has to be resized both ways)."""
    folder.mkdir(parents=True, exist_ok=True)
    size = (96, 96)
    Image.open(DATA / "astronaut.mask.png").convert("L").resize(
        size, Image.Resampling.NEAREST
    ).save(folder / "astronaut.mask.png")
    Image.open(DATA / "astronaut.png").convert("RGB").resize(size, Image.Resampling.LANCZOS).save(
        folder / "astronaut.png"
    )
    return {}


def _clip_folder(folder: Path, root: Path) -> dict[str, Any]:
    clip = folder / "clip"
    clip.mkdir(parents=True)
    for index, image in enumerate(_chelsea_crops(3, (64, 48)), start=1):
        image.save(clip / f"frame_{index:04d}.png")
    return {}


def _video(folder: Path, root: Path) -> dict[str, Any]:
    _write_video(folder / "pan.mov", _astronaut_crops(3, (64, 48)), fps=8)
    return {}


def _tagged_image(folder: Path, root: Path) -> dict[str, Any]:
    _copy("chelsea.png", folder / "chelsea.png")
    return {}


def _lora(folder: Path, root: Path) -> dict[str, Any]:
    _write_lora(root / "loras" / "golden_style.safetensors")
    _copy("astronaut.png", folder / "astronaut.png")
    return {"lora_dirs": [root / "loras"]}


def _png_with_parameters(folder: Path, root: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", PNG_PARAMETERS)
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    image.resize((96, 64), Image.Resampling.LANCZOS).save(folder / "fox.png", pnginfo=chunk)
    return {}


CASES: dict[str, Case] = {
    "img2img": Case(BASE, _image_only),
    "sketch": Case({**BASE, "task": "sketch"}, _with_sketch),
    "inpaint_fill": Case({**INPAINT, "inpainting_fill": "fill"}, _with_mask),
    "inpaint_original": Case({**INPAINT, "inpainting_fill": "original"}, _with_mask),
    "inpaint_latent_noise": Case({**INPAINT, "inpainting_fill": "latent noise"}, _with_mask),
    "inpaint_latent_nothing": Case(
        {**INPAINT, "inpainting_fill": "latent nothing", "denoising_strength": 1.0}, _with_mask
    ),
    "inpaint_only_masked": Case(
        {**INPAINT, "inpaint_full_res": True, "inpaint_full_res_padding": 8, "mask_blur": 2},
        _small_with_mask,
    ),
    "inpaint_sketch": Case({**BASE, "task": "inpaint_sketch"}, _with_sketch),
    # A clip: one seed, colours matched to the first frame (the clip default).
    "clip": Case({**BASE, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}, _clip_folder),
    "video": Case({**BASE, "keep_frames": True}, _video),
    "interrogate_clip": Case(INTERROGATE_CLIP, _image_only),
    "interrogate_tags": Case(INTERROGATE_TAGS, _tagged_image),
    "lora": Case({**BASE, "prompt": f"{BASE['prompt']} <lora:golden_style:1>"}, _lora),
    # The profile's prompt, seed and sampler are all overridden by the PNG's parameters.
    "png_info": Case({**BASE, "use_png_info": True, "prompt": "unused"}, _png_with_parameters),
}


# --------------------------------------------------------------------------- describing files


def platform_fingerprint() -> dict[str, str]:
    """What float results depend on: the torch build, its CPU kernels and the architecture."""
    import torch

    return {
        "torch": torch.__version__,
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "machine": platform.machine(),
    }


def normalise(text: str, volatile: list[Path]) -> str:
    """The text with what differs between runs replaced by stable marks.

    Between two runs only the temporary folders differ (the workspace, the state folder), so
    they are replaced by ``<tmp>``. When recorded, no output text held either (two recordings
    were byte-identical); this guards against a note or report that would. Everything else
    (version, hashes, seeds, scores) is kept: a refactor must not change it.
    """
    for folder in volatile:
        for form in sorted({str(folder), str(folder.resolve())}, key=len, reverse=True):
            text = text.replace(form, "<tmp>")
    return text


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pixel_hash(path: Path) -> str:
    return hashlib.sha256(pixels(path).tobytes()).hexdigest()


def decoded_frames(path: Path) -> tuple[list[np.ndarray], Fraction | None]:
    """A video's frames as RGB arrays, and its average frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream.average_rate


def video_summary(path: Path) -> dict[str, Any]:
    frames, rate = decoded_frames(path)
    height, width = frames[0].shape[:2]
    return {"frames": len(frames), "size": f"{width}x{height}", "fps": str(rate)}


def describe(path: Path, volatile: list[Path]) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        with Image.open(path) as image:
            width, height = image.size
            # The parameters an image carries (the sidecar has the same; a video's frames
            # have their own, with each frame's seed).
            text = image.info.get("parameters")
        found = {"kind": "image", "size": f"{width}x{height}", "sha256": pixel_hash(path)}
        if isinstance(text, str):
            found["parameters"] = normalise(text, volatile)
        return found
    if suffix in TEXT_SUFFIXES:
        return {"kind": "text", "text": normalise(path.read_text(encoding="utf-8"), volatile)}
    if suffix in VIDEO_SUFFIXES:
        return {"kind": "video", **video_summary(path)}
    # Anything else is new: recorded by its bytes so that it is at least noticed.
    return {"kind": "bytes", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def files_under(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def input_fingerprints(folder: Path, root: Path) -> dict[str, str]:
    """What the inputs were, to tell "the inputs changed" from "the code changed" when a case
    fails (images by pixels: PNG bytes vary with the zlib build)."""
    found = {}
    for name, path in {**files_under(folder), **files_under(root / "loras")}.items():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found[name] = pixel_hash(path)
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            frames, _ = decoded_frames(path)
            found[name] = hashlib.sha256(b"".join(f.tobytes() for f in frames)).hexdigest()
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# --------------------------------------------------------------------------- comparing


def _close(recorded: Any, found: Any) -> bool:
    """JSON values equal, numbers within a relative 1e-4 (for another platform only)."""
    if isinstance(recorded, dict) and isinstance(found, dict):
        return recorded.keys() == found.keys() and all(_close(recorded[k], found[k]) for k in found)
    if isinstance(recorded, list) and isinstance(found, list):
        return len(recorded) == len(found) and all(map(_close, recorded, found))
    numbers = (int, float)  # by type: a bool is an int to isinstance, and must stay equal
    if type(recorded) in numbers and type(found) in numbers:
        return math.isclose(recorded, found, rel_tol=1e-4, abs_tol=1e-6)
    return bool(recorded == found)


def text_diff(name: str, recorded: str | None, found: str | None) -> str:
    lines = difflib.unified_diff(
        (recorded or "").splitlines(), (found or "").splitlines(), "recorded", "now", lineterm=""
    )
    return f"{name}: text differs\n" + "\n".join(lines)


def compare(
    case: str, recorded: dict[str, Any], found: dict[str, Any], outbox: Path, same_platform: bool
) -> list[str]:
    problems = []
    if sorted(recorded) != sorted(found):
        problems.append(f"output files differ: recorded {sorted(recorded)}, now {sorted(found)}")
    for name in sorted(recorded.keys() & found.keys()):
        want, got = recorded[name], found[name]
        if want["kind"] != got["kind"]:
            problems.append(f"{name}: was {want['kind']}, now {got['kind']}")
        elif want["kind"] == "image":
            problems += _compare_image(case, name, want, got, outbox / name, same_platform)
        elif want["kind"] == "text":
            if want["text"] != got["text"]:
                numbers_only = (
                    not same_platform
                    and name.endswith(".json")
                    and _close(json.loads(want["text"]), json.loads(got["text"]))
                )
                if not numbers_only:
                    problems.append(text_diff(name, want["text"], got["text"]))
        elif want != got:
            problems.append(f"{name}: recorded {want}, now {got}")
    return problems


def stored_image(case: str, name: str) -> Path:
    """Where the recording keeps an output image's pixels: as a PNG whatever its format."""
    return GOLDEN / case / (name if name.lower().endswith(".png") else f"{name}.png")


def _compare_image(
    case: str, name: str, want: dict[str, Any], got: dict[str, Any], path: Path, same: bool
) -> list[str]:
    if want["size"] != got["size"]:
        return [f"{name}: size {got['size']}, recorded {want['size']}"]
    problems = []
    if want.get("parameters") != got.get("parameters"):
        problems.append(
            text_diff(
                f"{name} (embedded parameters)", want.get("parameters"), got.get("parameters")
            )
        )
    if want["sha256"] == got["sha256"]:
        return problems
    stored = stored_image(case, name)
    difference = np.abs(pixels(stored).astype(np.int16) - pixels(path).astype(np.int16))
    largest, changed = int(difference.max()), int((difference.max(axis=-1) > 0).sum())
    detail = f"{name}: pixels differ (max {largest} levels, {changed} pixels) from {stored}"
    if same:
        return [*problems, f"{detail}; same platform as the recording: must be identical"]
    if largest > TOLERANCE:
        return [*problems, f"{detail}; over the {TOLERANCE}-level tolerance for another platform"]
    warnings.warn(
        f"golden {case}/{detail}: within {TOLERANCE} levels, accepted because the recording "
        "was made on another platform",
        stacklevel=2,
    )
    return problems


# --------------------------------------------------------------------------- the test


def _load_index() -> dict[str, Any]:
    if INDEX.is_file():
        return dict(json.loads(INDEX.read_text(encoding="utf-8")))
    return {"cases": {}}


def _record(case: str, entry: dict[str, Any], outputs: dict[str, Path]) -> None:
    folder = GOLDEN / case
    shutil.rmtree(folder, ignore_errors=True)
    for name, path in outputs.items():
        if entry["outputs"][name]["kind"] == "image":
            target = stored_image(case, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Pixels only, losslessly: the comparison is of pixels, not of the file.
            Image.fromarray(pixels(path)).save(target, optimize=True)
    index = _load_index()
    index["cases"][case] = entry
    # Sorted, and without cases this file no longer has.
    index["cases"] = {
        name: index["cases"][name] for name in sorted(index["cases"]) if name in CASES
    }
    INDEX.parent.mkdir(parents=True, exist_ok=True)
    INDEX.write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def golden_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state folder of every daemon here: the tiny models are built into it once (4 s),
    whatever its layout; each daemon still loads them afresh (see test_golden)."""
    return tmp_path_factory.mktemp("golden-state")


@pytest.mark.parametrize("case", list(CASES))
def test_golden(case: str, workspace: Workspace, golden_state: Path) -> None:
    spec = CASES[case]
    package = Path(sys.modules[Daemon.__module__].__file__ or "").resolve()
    if RECORD and not package.is_relative_to(Path(__file__).resolve().parents[1]):
        pytest.fail(f"recording would run the daemon installed at {package}, not this checkout")

    (workspace.profiles / f"{case}.yaml").write_text(yaml.safe_dump(spec.profile))
    folder = workspace.inbox / case
    folder.mkdir(parents=True, exist_ok=True)
    extra = spec.inputs(folder, workspace.root)
    inputs = input_fingerprints(folder, workspace.root)
    settings = workspace.settings(state_dir=golden_state, stability_delay=0.0, **extra)
    # No `models=`: the daemon makes its own model cache, as `img2imgd once` does. The
    # session's shared cache is not used because other tests leave state on it that changes
    # pixels (e.g. the low-memory mode an out-of-memory test switches on: attention slicing
    # and VAE tiling), so results would depend on which tests ran before. Its own cache also
    # reads lora_dirs and keeps the LoRA out of every other case's pipeline.
    tally = Daemon(settings, watch=False).run_once(tick=0.01)
    failed = files_under(workspace.inbox / "_failed")
    assert tally.failed == 0 and tally.deferred == 0, f"{tally}; _failed holds {sorted(failed)}"

    outbox = workspace.outbox / case
    outputs = files_under(outbox)
    assert outputs, f"{case} wrote nothing"
    volatile = [workspace.root, golden_state]
    found = {name: describe(path, volatile) for name, path in outputs.items()}
    entry = {"platform": platform_fingerprint(), "inputs": inputs, "outputs": found}
    if RECORD:
        _record(case, entry, outputs)
        return

    recorded = _load_index()["cases"].get(case)
    if recorded is None:
        pytest.fail(f"no recording for {case}: run with IMG2IMGD_RECORD_GOLDEN=1 to make one")
    same_platform = recorded["platform"] == entry["platform"]
    problems = compare(case, recorded["outputs"], found, outbox, same_platform)
    if problems and recorded["inputs"] != inputs:
        changed = sorted(
            name
            for name in recorded["inputs"].keys() | inputs.keys()
            if recorded["inputs"].get(name) != inputs.get(name)
        )
        problems.append(f"note: the inputs themselves changed ({', '.join(changed)})")
    if problems and not same_platform:
        problems.append(f"note: recorded on {recorded['platform']}, running on {entry['platform']}")
    assert not problems, f"golden case {case}:\n" + "\n".join(problems)
