"""``reference_only``'s rules (style fidelity, which blocks a weight reaches) and the attention
bank's read and write, on a real diffusers attention layer and the real tiny UNet."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from daemon.cli import check_problems
from daemon.controlnet.modules import module_named
from daemon.controlnet.reference import attention_weights, style_fidelity, writes_to
from daemon.controlnet.units import ControlMode, ControlNetUnit
from daemon.engines.attention_bank import (
    AttentionBank,
    BankedSelfAttention,
    banked,
    self_attention_blocks,
)
from daemon.render.cache import ModelCache
from tests.conftest import Workspace

BALANCED, PROMPT, CONTROL = ControlMode.BALANCED, ControlMode.PROMPT, ControlMode.CONTROL


@pytest.mark.parametrize(
    ("threshold", "mode", "sdxl", "fidelity"),
    [
        (0.5, BALANCED, False, 0.5),
        (0.5, BALANCED, True, 0.125),  # cubed on SDXL
        (1.0, BALANCED, True, 1.0),
        (0.5, CONTROL, False, 1.0),  # "ControlNet is more important": all fidelity
        (0.5, CONTROL, True, 1.0),
        (0.9, PROMPT, False, 0.0),  # "My prompt is more important": none
        (1.7, BALANCED, False, 1.0),  # clipped to 0..1
    ],
)
def test_style_fidelity_follows_the_extension(threshold, mode, sdxl, fidelity):
    assert style_fidelity(threshold, mode, sdxl=sdxl) == pytest.approx(fidelity)


def test_blocks_are_weighted_widest_first_ties_in_unet_order():
    # input 32, input 64, middle 64, output 64, output 32
    assert attention_weights([32, 64, 64, 64, 32]) == [0.6, 0.0, 0.2, 0.4, 0.8]


def test_a_weight_reaches_the_blocks_below_it():
    weights = attention_weights([32, 64, 64, 32])
    assert [writes_to(1.0, w) for w in weights] == [True] * 4
    assert [writes_to(0.5, w) for w in weights] == [False, True, True, False]
    assert [writes_to(0.0, w) for w in weights] == [False] * 4


def test_reference_only_is_a_unit_without_controlnet():
    module = module_named("reference_only")
    assert not module.uses_controlnet
    assert (module.slider_1.minimum, module.slider_1.maximum) == (0, 1)
    unit = ControlNetUnit(enabled=True, module="reference_only")
    assert unit.threshold_a == 0.5 and not unit.needs_model
    with pytest.raises(ValidationError, match="reference_only uses no ControlNet: remove"):
        ControlNetUnit(enabled=True, module="reference_only", model="builtin:tiny-controlnet")
    with pytest.raises(ValidationError, match="an enabled unit needs a `model`"):
        ControlNetUnit(enabled=True, module="canny")


def attention_layer() -> torch.nn.Module:
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=8, heads=2, dim_head=4)


def test_the_bank_reads_what_was_written_and_fidelity_frees_the_unconditional_rows():
    layer = attention_layer()
    original = layer.processor
    bank = AttentionBank(unconditional=1)
    processor = BankedSelfAttention(bank, original, attn_weight=0.0)
    bank.processors.append(processor)
    layer.set_processor(processor)
    states, reference = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    plain = original(layer, states)
    assert torch.equal(layer(states), plain)  # nothing stored: the original, exactly
    with bank.writing(1.0, fidelity=1.0):
        layer(reference)
    read = layer(states)
    with_bank = original(layer, states, torch.cat([states, reference], dim=1))
    assert torch.allclose(read[:1], plain[:1], atol=1e-6)  # unconditional row: itself only
    assert torch.allclose(read[1:], with_bank[1:], atol=1e-6)  # conditional row: the bank
    assert not processor.stored and torch.equal(layer(states), plain)  # read once


def test_a_writer_below_the_blocks_weight_stores_nothing():
    layer = attention_layer()
    bank = AttentionBank()
    processor = BankedSelfAttention(bank, layer.processor, attn_weight=0.5)
    layer.set_processor(processor)
    with bank.writing(0.5, fidelity=0.0):
        layer(torch.randn(1, 6, 8))
    assert not processor.stored


def test_every_self_attention_is_banked_and_given_back(models: ModelCache):
    unet = models.pipeline("builtin:tiny-sd", "img2img").unet
    blocks = self_attention_blocks(unet)
    down = [m for part in unet.down_blocks for m in part.modules() if m in blocks]
    assert blocks[: len(down)] == down and blocks  # the input blocks first
    before = dict(unet.attn_processors)
    with banked(unet) as bank:
        assert len(bank.processors) == len(blocks)
        assert all(block.attn1.processor in bank.processors for block in blocks)
    assert unet.attn_processors == before


def test_check_finds_nothing_to_load_for_a_reference_unit(tmp_path, state_dir):
    workspace = Workspace(tmp_path, state_dir).create()
    workspace.profile("p", controlnet=[{"enabled": True, "module": "reference_only"}])
    assert check_problems(workspace.settings()) == []
