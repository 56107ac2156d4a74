"""Where a model's weights go (daemon/render/offload.py), and its size read before loading
(daemon/models/model_size.py): the choice is a pure function, tested on the real families'
parameter counts and real cards' free memory; the sizes come from real files' headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from daemon.models.model_size import ModelSize, folder_size, model_size, single_file_size
from daemon.models.resolve import ModelSource
from daemon.render.offload import HEADROOM, Placement, choose_offload, stronger

GB = 10**9
GIB = 2**30
# Parameter counts (bf16: 2 bytes each): FLUX.1-dev's transformer 11.9 B, T5-XXL's encoder
# 4.76 B + CLIP-L 0.12 B, its VAE 84 M; Qwen-Image's 20.4 B transformer, Qwen2.5-VL-7B 8.3 B.
FLUX = ModelSize(denoiser=11_900_000_000, encoders=4_880_000_000, vae=84_000_000)
QWEN = ModelSize(denoiser=20_430_000_000, encoders=8_290_000_000, vae=127_000_000)
SDXL = ModelSize(denoiser=2_567_000_000, encoders=817_000_000, vae=84_000_000)
# Free memory of an idle card: its size less CUDA's context (about half a GiB).
H100 = 79 * GIB
A100_40 = int(39.5 * GIB)
RTX_5090 = int(31.5 * GIB)
RTX_4090 = int(23.5 * GIB)
RTX_3060 = int(11.5 * GIB)


@pytest.mark.parametrize(
    ("size", "free", "mode"),
    [
        (FLUX, H100, "none"),  # 33.7 GB of 72 GB
        (FLUX, A100_40, "none"),  # 33.7 GB of 36.0 GB
        (FLUX, RTX_5090, "model"),  # the transformer's 23.8 GB of 28.7 GB
        (FLUX, RTX_4090, "sequential"),  # 23.8 GB > 21.4 GB: even the transformer is too big
        (QWEN, H100, "none"),  # 57.7 GB of 72 GB
        (QWEN, A100_40, "sequential"),  # the transformer alone is 40.9 GB
        (SDXL, RTX_3060, "none"),  # 6.9 GB of 10.5 GB
        (SDXL, 6 * GIB, "model"),  # 6.9 GB > 5.5 GB; the UNet's 5.1 GB fits
    ],
)
def test_auto_chooses_from_the_size_and_the_free_memory(
    size: ModelSize, free: int, mode: str
) -> None:
    assert choose_offload("auto", device="cuda", size=size, free=free).mode == mode


def test_the_reason_names_each_part_the_free_memory_and_how_to_force_another_mode() -> None:
    placement = choose_offload("auto", device="cuda", size=FLUX, free=RTX_5090)
    assert placement == Placement(
        "model",
        "transformer 23.8 GB + encoders 9.8 GB + VAE 0.2 GB > 85% of 33.8 GB free: model CPU "
        "offload (slower; set offload: none to force)",
    )
    quiet = choose_offload("auto", device="cuda", size=FLUX, free=H100, denoiser="UNet")
    assert quiet.reason.startswith("UNet 23.8 GB + encoders 9.8 GB + VAE 0.2 GB <= 85% of ")
    assert quiet.reason.endswith(" free: all on the GPU")
    last = choose_offload("auto", device="cuda", size=FLUX, free=RTX_4090).reason
    assert "its largest part alone does not fit: sequential CPU offload (much slower" in last


def test_the_headroom_is_the_boundary() -> None:
    free = 10 * GB
    fits = ModelSize(denoiser=int(HEADROOM * free) // 2)  # exactly the budget, at 2 bytes
    assert choose_offload("auto", device="cuda", size=fits, free=free).mode == "none"
    over = ModelSize(denoiser=fits.denoiser + 1)
    assert choose_offload("auto", device="cuda", size=over, free=free).mode == "sequential"


def test_bytes_per_parameter_scales_the_weights() -> None:
    # Flux in fp32 takes twice its bf16 size: on a 40 GB A100 even the transformer is too big.
    assert choose_offload("auto", device="cuda", size=FLUX, free=A100_40).mode == "none"
    fp32 = choose_offload("auto", device="cuda", size=FLUX, free=A100_40, bytes_per_parameter=4)
    assert fp32.mode == "sequential"


@pytest.mark.parametrize("requested", ["none", "model", "sequential"])
def test_an_explicit_mode_is_taken_as_it_is_on_a_gpu(requested: str) -> None:
    for size, free in [(FLUX, RTX_3060), (SDXL, H100), (None, None)]:
        placement = choose_offload(requested, device="cuda:1", size=size, free=free)  # type: ignore[arg-type]
        assert placement.mode == requested
        assert placement.reason.endswith(f"(offload: {requested})")


@pytest.mark.parametrize("device", ["cpu", "mps"])
@pytest.mark.parametrize("requested", ["auto", "none", "model", "sequential"])
def test_without_cuda_everything_stays_on_the_device(device: str, requested: str) -> None:
    placement = choose_offload(requested, device=device, size=FLUX, free=None)  # type: ignore[arg-type]
    assert placement.mode == "none"
    if requested in ("model", "sequential"):
        assert placement.reason == f"offload: {requested} needs a CUDA GPU: all on the {device}"
    else:
        assert placement.reason == f"all on the {device}"


def test_an_unknown_size_or_free_memory_keeps_all_on_the_gpu() -> None:
    unknown_size = choose_offload("auto", device="cuda", size=None, free=H100)
    assert unknown_size.mode == "none" and "the model's size is unknown" in unknown_size.reason
    unknown_free = choose_offload("auto", device="cuda", size=FLUX, free=None)
    assert unknown_free.mode == "none" and "the GPU's free memory is unknown" in unknown_free.reason


def test_out_of_memory_steps_to_the_next_mode_on_a_gpu_only() -> None:
    assert stronger("none", device="cuda") == "model"
    assert stronger("model", device="cuda") == "sequential"
    assert stronger("sequential", device="cuda") is None
    assert stronger("none", device="cpu") is None


# ----------------------------------------------------------------------------- sizes


def write_header(path: Path, shapes: dict[str, list[int]], dtype: str = "F16") -> Path:
    """A safetensors file whose header lists `shapes` (the data is zeros: only the header
    is read)."""
    size = {"F16": 2, "F32": 4, "F8_E4M3": 1}[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + count * size],
        }
        offset += count * size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def test_a_folder_counts_each_component_once_whatever_its_dtype(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "model_index.json").parent.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    # The transformer in two shards, beside an fp16 variant of the same weights.
    write_header(folder / "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
                 {"a": [10, 10]}, "F32")  # fmt: skip
    write_header(folder / "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
                 {"b": [5]}, "F32")  # fmt: skip
    write_header(folder / "transformer/diffusion_pytorch_model.fp16.safetensors",
                 {"a": [10, 10], "b": [5]})  # fmt: skip
    write_header(folder / "text_encoder/model.safetensors", {"e": [7, 3]})
    write_header(folder / "text_encoder_2/model.fp16.safetensors", {"f": [4]}, "F8_E4M3")
    write_header(folder / "vae/diffusion_pytorch_model.safetensors", {"v": [2, 3]})
    (folder / "tokenizer").mkdir()
    assert folder_size(folder) == ModelSize(denoiser=105, encoders=25, vae=6)
    source = ModelSource(ref=str(folder), kind="folder", location=str(folder), name="model")
    assert model_size(source) == ModelSize(denoiser=105, encoders=25, vae=6)


def test_a_single_file_is_split_by_its_tensors_prefixes(tmp_path: Path) -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "model.diffusion_model.x.weight": {"shape": [4, 4]},
        "cond_stage_model.y.weight": {"shape": [3]},
        "conditioner.embedders.0.z": {"shape": [2, 2]},
        "first_stage_model.w": {"shape": [5]},
    }
    assert single_file_size(header) == ModelSize(denoiser=16, encoders=7, vae=5)
    # A BFL/ComfyUI Flux file holds only the transformer, often without a prefix.
    assert single_file_size({"double_blocks.0.img_attn.qkv.weight": {"shape": [9, 3]}}).total == 27
    file = write_header(tmp_path / "flux.safetensors", {"double_blocks.0.x": [3, 3]}, "F8_E4M3")
    source = ModelSource(ref="flux", kind="single_file", location=str(file), name="flux")
    assert model_size(source) == ModelSize(denoiser=9)


def test_what_cannot_be_read_before_loading_has_no_size(tmp_path: Path) -> None:
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"\x80\x02")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 4)
    for location in (pickled, broken, tmp_path / "missing", tmp_path):
        source = ModelSource(ref="x", kind="single_file", location=str(location), name="x")
        assert model_size(source) is None, location


def test_the_built_in_tiny_flux_size_is_its_parameters(state_dir: Path) -> None:
    from safetensors import safe_open

    from daemon.models.builtin import ensure_builtin

    folder = ensure_builtin("tiny-flux", state_dir / "builtin")
    counted = {}
    for part in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        total = 0
        for file in (folder / part).glob("*.safetensors"):
            with safe_open(file, "pt") as opened:
                total += sum(_count(opened.get_slice(key).get_shape()) for key in opened.keys())  # noqa: SIM118
        counted[part] = total
    size = folder_size(folder)
    assert size == ModelSize(
        denoiser=counted["transformer"],
        encoders=counted["text_encoder"] + counted["text_encoder_2"],
        vae=counted["vae"],
    )
    assert size is not None and size.denoiser == 82_688  # the research notes' count


def _count(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total
