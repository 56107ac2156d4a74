"""Where an IP-Adapter's layers sit in a UNet: one per cross-attention layer, in the order
of ``unet.attn_processors``, numbered 1, 3, 5 … in h94's files (``ip_adapter.<n>.to_k_ip``),
as diffusers' ``_convert_ip_adapter_attn_to_diffusers`` reads them."""

from __future__ import annotations

from typing import Any


def cross_attention_layers(unet: Any) -> list[tuple[str, int, int]]:
    """(processor name, channels, number in the file) of each cross-attention layer."""
    channels = list(unet.config.block_out_channels)
    layers: list[tuple[str, int, int]] = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block, _, rest = name.partition(".")
        if block == "up_blocks":
            width = channels[::-1][int(rest.split(".")[0])]
        elif block == "down_blocks":
            width = channels[int(rest.split(".")[0])]
        else:  # the mid block
            width = channels[-1]
        layers.append((name, width, 1 + 2 * len(layers)))
    return layers
