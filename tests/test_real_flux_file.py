"""A full-width Flux.1-dev transformer in BFL's single-file layout (ComfyUI's and Forge's
``flux1-dev.safetensors``), loaded offline through the daemon's own path: told apart from
its header, built from the shipped FLUX.1-dev config with the depth its weights have, every
tensor back as saved; and the same file in fp8, cast up within fp8's rounding.

Marker ``real`` (``make test-real``): diffusers' Flux converter hard-codes Flux's widths
(3072 wide, 24 heads), so only a full-width model goes through it. Full depth (11.9 B
parameters, 24 GB in bf16) does not fit a CI machine: the first test is shallow, one double
and one single block (0.53 B parameters, 1 GB), named so. The last is the real depth, 19 + 38
blocks, and runs where the machine has the memory for it (a GPU machine's 128 GB); elsewhere
it is skipped saying so. Its files live in the test's tmp.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.models.flow_files import FlowFile, detect_file
from daemon.models.flow_loading import load_transformer
from daemon.models.fp8 import dequantize
from daemon.models.single_file import CONFIGS_DIR
from tests.support.bfl import to_bfl

pytestmark = [pytest.mark.real, pytest.mark.timeout(1800)]
FLUX_DEV = CONFIGS_DIR / "flux-dev"


FULL_DEPTH_NEEDS = 96 * 2**30
"""Available memory for the full-depth file: its weights (24 GB in bf16) once as built, once
in BFL's fused layout and once as loaded, with room to spare."""


def random_flux(double: int | None = None, single: int | None = None) -> dict[str, torch.Tensor]:
    """A full-width FLUX.1-dev transformer (its own depth unless given), random bf16 weights."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    config = FluxTransformer2DModel.load_config(FLUX_DEV / "transformer")
    depth = {"num_layers": double or config["num_layers"],
             "num_single_layers": single or config["num_single_layers"]}  # fmt: skip
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config({**config, **depth})
    generator = torch.Generator().manual_seed(0)
    return {
        name: (torch.randn(p.shape, generator=generator) * 0.02).to(torch.bfloat16)
        for name, p in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def shallow_flux() -> dict[str, torch.Tensor]:
    """A full-width FLUX.1-dev transformer of 1 + 1 blocks."""
    return random_flux(1, 1)


def test_full_width_flux_file_loads_offline_through_the_daemons_path(
    shallow_flux: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    file = tmp_path / "flux1-dev-shallow.safetensors"
    save_file(to_bfl(shallow_flux), str(file))
    flow = detect_file(file)
    assert isinstance(flow, FlowFile)
    assert (flow.variant, flow.prefix, flow.all_in_one) == (
        "flux-dev",
        "model.diffusion_model.",
        False,
    )
    weights = {k.removeprefix(flow.prefix): v for k, v in load_file(str(file)).items()}
    model = load_transformer(weights, _shapes(weights), flow, FLUX_DEV, torch.bfloat16)
    assert (model.config.num_layers, model.config.num_single_layers) == (1, 1)
    loaded = model.state_dict()
    assert loaded.keys() == shallow_flux.keys()
    for name, tensor in shallow_flux.items():
        assert torch.equal(loaded[name], tensor), name


def test_the_same_file_in_fp8_loads_within_fp8_rounding(
    shallow_flux: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    bfl = to_bfl(shallow_flux)
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in bfl.items()}
    file = tmp_path / "flux1-dev-shallow-fp8_e4m3fn.safetensors"
    save_file(fp8, str(file))
    del bfl, fp8
    flow = detect_file(file)
    assert isinstance(flow, FlowFile) and flow.fp8 == "plain"
    weights = dequantize(load_file(str(file)), torch.bfloat16)
    weights = {k.removeprefix(flow.prefix): v for k, v in weights.items()}
    model = load_transformer(weights, _shapes(weights), flow, FLUX_DEV, torch.bfloat16)
    loaded = model.state_dict()
    worst = max((loaded[k].float() - v.float()).abs().max().item() for k, v in shallow_flux.items())
    assert all(t.dtype == torch.bfloat16 for t in loaded.values())
    assert worst < 0.01  # weights of ~0.02·N(0,1): e4m3's 3 mantissa bits


def _shapes(weights: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in weights.items()}


def test_the_full_depth_flux_file_loads_where_the_memory_allows(tmp_path: Path) -> None:
    """19 + 38 blocks, 11.9 B parameters: the file a user downloads, at its real size."""
    from tests.support.measured import mem_available

    if mem_available() < FULL_DEPTH_NEEDS:
        needed = f"{FULL_DEPTH_NEEDS / 2**30:.0f} GiB needed for the full-depth Flux file"
        pytest.skip(f"{mem_available() / 2**30:.0f} GiB available, {needed}")
    file = tmp_path / "flux1-dev.safetensors"
    save_file(to_bfl(random_flux()), str(file))
    flow = detect_file(file)
    assert isinstance(flow, FlowFile) and flow.variant == "flux-dev"
    weights = {k.removeprefix(flow.prefix): v for k, v in load_file(str(file)).items()}
    model = load_transformer(weights, _shapes(weights), flow, FLUX_DEV, torch.bfloat16)
    assert (model.config.num_layers, model.config.num_single_layers) == (19, 38)
    assert sum(p.numel() for p in model.parameters()) == 11_901_408_320
