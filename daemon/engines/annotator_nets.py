"""The lineart and HED annotators, run as the extension runs them, from their weight files.

These two need nothing beyond torch, so they are here rather than behind the optional
controlnet_aux library: their network classes are copied, layer for layer (the weight files'
keys depend on the attribute names), from controlnet_aux 0.0.10
(``controlnet_aux/lineart/__init__.py``, ``controlnet_aux/hed/__init__.py``; Apache License
2.0), which has them from the extension's ``annotator/lineart`` (the ``Generator`` of
"Learning to generate line drawings", Chan et al., MIT License) and ``annotator/hed``
(lllyasviel's ``ControlNetHED_Apache2``, Apache License 2.0).

What runs around the network is the extension's (``scripts/preprocessor/legacy/
processor.py`` ``lineart`` / ``hed``; ``annotator/hed/__init__.py`` ``apply_hed``): the
image padded to the processor resolution, the map cropped back; lineart inverted (white
lines on black); HED's five side outputs resized to the input (bilinear, as OpenCV's
``INTER_LINEAR``), averaged, through a sigmoid, and for ``hed_safe`` quantised
(``safe_step``). The weights are read with ``torch.load(weights_only=True)``: tensors only,
no code, so these ``.pth`` files need no ``allow_pickle``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.controlnet.images import Pixels, hwc3, resize_with_pad

if TYPE_CHECKING:
    import torch


def lineart_generator(input_nc: int = 3, output_nc: int = 1, n_residual_blocks: int = 3) -> Any:
    """controlnet_aux's ``Generator(3, 1, 3)``: ``model0`` … ``model4`` as there."""
    import torch

    nn = torch.nn
    norm = nn.InstanceNorm2d

    class ResidualBlock(torch.nn.Module):
        def __init__(self, features: int) -> None:
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3), norm(features),
                nn.ReLU(inplace=True),
                nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3), norm(features),
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv_block(x)

    class Generator(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model0 = nn.Sequential(
                nn.ReflectionPad2d(3), nn.Conv2d(input_nc, 64, 7), norm(64), nn.ReLU(inplace=True)
            )
            down: list[Any] = []
            features = 64
            for _ in range(2):
                down += [nn.Conv2d(features, features * 2, 3, stride=2, padding=1),
                         norm(features * 2), nn.ReLU(inplace=True)]  # fmt: skip
                features *= 2
            self.model1 = nn.Sequential(*down)
            self.model2 = nn.Sequential(
                *[ResidualBlock(features) for _ in range(n_residual_blocks)]
            )
            up: list[Any] = []
            for _ in range(2):
                up += [nn.ConvTranspose2d(features, features // 2, 3, stride=2, padding=1,
                                          output_padding=1),
                       norm(features // 2), nn.ReLU(inplace=True)]  # fmt: skip
                features //= 2
            self.model3 = nn.Sequential(*up)
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, output_nc, 7),
                                        nn.Sigmoid())  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for part in (self.model0, self.model1, self.model2, self.model3, self.model4):
                x = part(x)
            return x

    return Generator()


def hed_network() -> Any:
    """lllyasviel's ``ControlNetHED_Apache2``: five VGG-like blocks, one side output each."""
    import torch

    nn = torch.nn

    class DoubleConvBlock(torch.nn.Module):
        def __init__(self, input_channel: int, output_channel: int, layer_number: int) -> None:
            super().__init__()
            self.convs = nn.Sequential(nn.Conv2d(input_channel, output_channel, 3, padding=1))
            for _ in range(1, layer_number):
                self.convs.append(nn.Conv2d(output_channel, output_channel, 3, padding=1))
            self.projection = nn.Conv2d(output_channel, 1, 1)

        def forward(self, x: torch.Tensor, *, down_sampling: bool = False) -> Any:
            if down_sampling:
                x = torch.nn.functional.max_pool2d(x, kernel_size=2, stride=2)
            for conv in self.convs:
                x = torch.nn.functional.relu(conv(x))
            return x, self.projection(x)

    class ControlNetHED(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.Parameter(torch.zeros(size=(1, 3, 1, 1)))
            self.block1 = DoubleConvBlock(3, 64, 2)
            self.block2 = DoubleConvBlock(64, 128, 2)
            self.block3 = DoubleConvBlock(128, 256, 3)
            self.block4 = DoubleConvBlock(256, 512, 3)
            self.block5 = DoubleConvBlock(512, 512, 3)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            h, first = self.block1(x - self.norm)
            projections = [first]
            for block in (self.block2, self.block3, self.block4, self.block5):
                h, projection = block(h, down_sampling=True)
                projections.append(projection)
            return projections

    return ControlNetHED()


NETWORKS = {"lineart": lineart_generator, "hed": hed_network}
"""By the annotator's folder: the network its weight file holds."""


def load_network(folder: str, weights: Path, device: str) -> Any:
    """The network of annotator `folder` with the tensors of `weights`, in eval mode."""
    import torch

    network = NETWORKS[folder]()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    return network.float().eval().to(device)


def _as_batch(image: Pixels, network: Any, *, scale: float) -> torch.Tensor:
    import torch

    device = next(network.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image)).float().to(device) * scale
    return x.permute(2, 0, 1)[None]


def run_lineart(network: Any, image: Pixels, resolution: int) -> Pixels:
    """The extension's ``lineart`` / ``lineart_coarse``: lines white on black."""
    import torch

    padded, remove_pad = resize_with_pad(image, resolution)
    with torch.no_grad():
        line = network(_as_batch(padded, network, scale=1 / 255))[0][0].cpu().numpy()
    line = (line * 255.0).clip(0, 255).astype(np.uint8)
    return remove_pad(hwc3(255 - line))


def run_hed(network: Any, image: Pixels, resolution: int, *, safe: bool) -> Pixels:
    """The extension's ``hed`` / ``hed_safe``: soft edges, white on black."""
    import torch

    padded, remove_pad = resize_with_pad(image, resolution)
    height, width = padded.shape[:2]
    with torch.no_grad():
        sides = network(_as_batch(padded, network, scale=1.0))
        sides = [
            torch.nn.functional.interpolate(side.float(), size=(height, width), mode="bilinear")
            for side in sides
        ]
        mean = torch.cat(sides, dim=1)[0].mean(dim=0).cpu().numpy().astype(np.float64)
    with np.errstate(over="ignore"):  # exp(-mean) of a strong edge: inf, edge 0, as intended
        edge = 1 / (1 + np.exp(-mean))
    if safe:
        edge = safe_step(edge)
    return remove_pad(hwc3((edge * 255.0).clip(0, 255).astype(np.uint8)))


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """The extension's ``safe_step``: edge strengths quantised to `step` levels."""
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)
