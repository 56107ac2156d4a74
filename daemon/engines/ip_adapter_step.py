"""IP-Adapter as a per-call step: the adapter's layers in the UNet for one call, the
reference's image tokens added to the text in every UNet call of it.

Why a hooked step and not diffusers' ``load_ip_adapter`` on the warm pipeline plus
``ip_adapter_image_embeds``: the pipeline is shared by every profile on the model, and a
loaded adapter would stay in it (its attention processors, ``encoder_hid_proj``); here the
layers go in when the call starts and the UNet's own come back when it ends, however it
ends. And the embedding is given to the UNet at the rows it actually gets (after the
prompts' step, ``AND`` included, and in a batch of frames), which the pipeline's
``prepare_ip_adapter_image_embeds`` cannot know: zeros on the unconditional rows, the
reference on the others, as diffusers' ``encode_image`` makes them.

A scale of 0 adds nothing: the step then stays out of the call, so the painting is exactly
the one without an adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from daemon.controlnet.infotext import display_text
from daemon.engines.call_steps import CallContext
from daemon.engines.ip_adapters import LoadedIPAdapter

_ENTRY_DEFAULTS = (
    ("resize_mode", "Crop and Resize"),
    ("processor_res", "512"),
    ("threshold_a", "0.5"),
    ("threshold_b", "0.5"),
    ("guidance_start", "0.0"),
    ("guidance_end", "1.0"),
    ("pixel_perfect", "False"),
    ("control_mode", "Balanced"),
)
"""The rest of an IP-Adapter unit's entry as the extension writes it with its defaults (the
``ip-adapter_clip_*`` preprocessors are legacy ones: resolution slider 512, hidden ones 0.5)."""


def infotext_entry(adapter: LoadedIPAdapter, scale: float, index: int) -> dict[str, str]:
    """``ControlNet <index>`` as the extension writes an IP-Adapter unit: ``Module:
    ip-adapter_clip_sd15, Model: ip-adapter_sd15 [hash], Weight: 1.0, …``."""
    fields = (("module", adapter.module), ("model", adapter.label), ("weight", str(scale)))
    texts = [f"{display_text(name)}: {value}" for name, value in (*fields, *_ENTRY_DEFAULTS)]
    return {f"ControlNet {index}": ", ".join(texts)}


class IPAdapterStep:
    """The adapter's layers and the reference's embedding, in every UNet call of a call."""

    def __init__(self, adapter: LoadedIPAdapter, embedding: Any, scale: float) -> None:
        self.adapter = adapter
        self.embedding = embedding  # (1, width): the projected CLIP image embedding
        self.scale = scale

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return call

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        return self._hooked(pipe.unet, context)

    @contextmanager
    def _hooked(self, unet: Any, context: CallContext) -> Iterator[None]:
        if self.scale == 0:
            yield
            return
        import torch

        layers = self.adapter.for_unet(unet)
        for processor in layers.processors.values():
            if hasattr(processor, "scale"):  # one scale per adapter: ours is the only one
                processor.scale = [self.scale]
        reference = self.embedding.to(device=unet.device, dtype=unet.dtype)

        def with_reference(encoder_hidden_states: Any, added_cond_kwargs: Any) -> Any:
            """The UNet's text states with the reference's image tokens, at its rows: zeros
            on the unconditional ones (the first ``images`` rows of a guided call)."""
            rows = encoder_hidden_states.shape[0]
            unconditional = context.images if rows > context.images else 0
            embeds = torch.cat(
                [torch.zeros_like(reference).expand(unconditional, -1),
                 reference.expand(rows - unconditional, -1)]
            )  # fmt: skip
            return encoder_hidden_states, layers.projection([embeds[:, None]])

        # Only the cross-attention layers change: self-attention stays as it is (sliced, or
        # reference_only's bank, which comes and goes inside the call). The image tokens
        # join the text where the UNet makes its cross-attention input, for every forward
        # (reference_only's own pass on the reference included).
        modules = {
            name: unet.get_submodule(name.removesuffix(".processor")) for name in layers.processors
        }
        own = {name: module.processor for name, module in modules.items()}
        try:
            for name, module in modules.items():
                module.set_processor(layers.processors[name])
            unet.process_encoder_hidden_states = with_reference
            yield
        finally:
            unet.__dict__.pop("process_encoder_hidden_states", None)  # the method again
            for name, module in modules.items():
                module.set_processor(own[name])
