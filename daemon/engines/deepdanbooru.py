"""A1111's DeepDanbooru tagger (``model-resnet_custom_v3.pt``), run with torch.

The file is a ``torch.save`` pickle of a plain state dict: convolution weights named
``n_Conv_0.weight``, ``n_Conv_0.bias`` … ``n_Conv_178.weight`` (the last one has no bias), plus
one non-tensor entry, ``tags``, the list of 9,176 Danbooru tag names in output order. Tag
categories are not stored; only the ``rating:*`` tags are known to be ratings.

The network (a port of KichangKim's TensorFlow DeepDanbooru "resnet_custom_v3") is a deep
bottleneck ResNet taking NHWC float input in 0–1:

* stem: 7x7 stride-2 convolution (zero padding 2 before, 3 after: TensorFlow's "same"), ReLU,
  3x3 stride-2 max pool after padding right/bottom by one with -inf;
* six groups of bottleneck blocks; a block is 1x1 → 3x3 → 1x1 convolutions with ReLUs between,
  added to the block's input (or to a 1x1 projection of it), then ReLU. The first block of a
  group has the projection; in groups that halve the size the 3x3 and the projection have
  stride 2 and the 3x3 is padded right/bottom only (TensorFlow "same" at stride 2), elsewhere
  the 3x3 is padded by one on every side;
* head: a 1x1 convolution to one channel per tag (no bias), global average, sigmoid.

Which convolution index plays which role is fixed by the file's key names, so it is a table
here (:data:`_GROUPS`); the channel counts are read from the tensors' shapes, so a narrow
state dict with the same names (the tests make one) runs through the same code as
the real 600 MB file. The weights are assigned to modules built on the ``meta`` device, so
loading costs no random initialisation and no second copy.

A1111's preprocessing: the image converted to RGB, "resize and fill" to 512x512 (resize mode
2), float divided by 255, NHWC, a batch of one.

torch is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from daemon.a1111.imaging import resize_image
from daemon.a1111.sizes import ResizeMode
from daemon.engines.tagger import CATEGORY_RATING, Tagger, TagInfo
from daemon.errors import ConfigError
from daemon.models.checkpoints import load_pickle
from daemon.models.resolve import check_pickle

if TYPE_CHECKING:
    import torch

INPUT_SIZE = 512
DEFAULT_THRESHOLD = 0.5
"""A1111's ``interrogate_deepbooru_score_threshold``."""
RATING_PREFIX = "rating:"

# One row per group of bottleneck blocks: (stride of its first block, whether that block's
# projection is numbered after its three convolutions instead of before them, how many plain
# blocks follow). The fourth group is the odd one out in the original export: its first block
# is numbered conv, conv, conv, projection.
_GROUPS: tuple[tuple[int, bool, int], ...] = (
    (1, False, 2),
    (2, False, 7),
    (2, False, 19),
    (2, True, 19),
    (2, False, 2),
    (2, False, 2),
)


@dataclass(frozen=True)
class _Block:
    convs: tuple[int, int, int]  # 1x1 reduce, 3x3, 1x1 expand
    projection: int | None  # 1x1 shortcut convolution; None = the input itself
    stride: int


def _layout() -> tuple[tuple[_Block, ...], int]:
    """The blocks in order and the head's index (178), from :data:`_GROUPS`."""
    blocks: list[_Block] = []
    index = 1  # n_Conv_0 is the stem
    for stride, projection_last, plain in _GROUPS:
        projection = index + 3 if projection_last else index
        first = index if projection_last else index + 1
        blocks.append(_Block((first, first + 1, first + 2), projection, stride))
        index += 4
        for _ in range(plain):
            blocks.append(_Block((index, index + 1, index + 2), None, 1))
            index += 3
    return tuple(blocks), index


BLOCKS, HEAD = _layout()
STEM = 0


def _strides() -> dict[int, int]:
    """Stride of every convolution that has one other than 1."""
    strides = {STEM: 2}
    for block in BLOCKS:
        if block.stride != 1:
            strides[block.convs[1]] = block.stride
            if block.projection is not None:
                strides[block.projection] = block.stride
    return strides


def _key(index: int, part: str = "weight") -> str:
    return f"n_Conv_{index}.{part}"


# ---------------------------------------------------------------------------------------------
# Checking a state dict


def check_state_dict(state: Mapping[str, Any]) -> list[str]:
    """The tag list of a DeepDanbooru state dict, once its layout is checked.

    ValueError with a plain sentence when the tag list or a weight is missing, a kernel has
    the wrong size, or the channel counts do not chain (the caller adds the file name)."""
    import torch

    tags = state.get("tags")
    if not isinstance(tags, Sequence) or isinstance(tags, str) or not tags:
        raise ValueError("it has no 'tags' list, so it is not A1111's DeepDanbooru model")
    if not all(isinstance(tag, str) for tag in tags):
        raise ValueError("its 'tags' entry is not a list of tag names")

    def shape(index: int, kernel: int) -> tuple[int, int]:
        weight = state.get(_key(index))
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"'{_key(index)}' is missing: not A1111's DeepDanbooru model")
        if weight.dim() != 4 or tuple(weight.shape[2:]) != (kernel, kernel):
            raise ValueError(
                f"'{_key(index)}' has shape {tuple(weight.shape)}, expected a {kernel}x{kernel} "
                "convolution: not A1111's DeepDanbooru model"
            )
        return int(weight.shape[1]), int(weight.shape[0])  # in, out

    def chain(index: int, kernel: int, channels: int) -> int:
        given, made = shape(index, kernel)
        if given != channels:
            raise ValueError(
                f"'{_key(index)}' takes {given} channels but receives {channels}: "
                "the file's layers do not fit together"
            )
        return made

    channels = chain(STEM, 7, 3)
    for block in BLOCKS:
        a, b, c = block.convs
        out = chain(c, 1, chain(b, 3, chain(a, 1, channels)))
        shortcut = channels if block.projection is None else chain(block.projection, 1, channels)
        if out != shortcut:
            raise ValueError(
                f"'{_key(c)}' makes {out} channels but its shortcut has {shortcut}: "
                "the file's layers do not fit together"
            )
        channels = out
    if chain(HEAD, 1, channels) != len(tags):
        raise ValueError(
            f"the model scores {shape(HEAD, 1)[1]} tags but its 'tags' list has {len(tags)}"
        )
    return list(tags)


# ---------------------------------------------------------------------------------------------
# The network


def build_network(state: Mapping[str, Any]) -> torch.nn.Module:
    """A module holding ``n_Conv_*`` layers shaped by ``state`` and loaded with its tensors.

    ``state`` must have passed :func:`check_state_dict`. Tensors are assigned, not copied."""
    import torch

    strides = _strides()
    net = torch.nn.Module()
    weights = {
        key: value.float() for key, value in state.items() if isinstance(value, torch.Tensor)
    }
    with torch.device("meta"):
        for index in range(HEAD + 1):
            out, given, kernel, _ = weights[_key(index)].shape
            conv = torch.nn.Conv2d(
                given,
                out,
                kernel,
                stride=strides.get(index, 1),
                bias=_key(index, "bias") in weights,
            )
            net.add_module(f"n_Conv_{index}", conv)
    # strict: a stray or missing tensor means this is some other network.
    net.load_state_dict(weights, strict=True, assign=True)
    return net.eval()


def forward(net: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Tag probabilities ``(batch, tags)`` for NHWC float input in 0–1."""
    import torch
    import torch.nn.functional as F

    convs: dict[str, torch.nn.Module] = dict(net.named_children())

    def conv(index: int, x: torch.Tensor) -> torch.Tensor:
        return convs[f"n_Conv_{index}"](x)

    x = pixels.permute(0, 3, 1, 2)
    x = F.relu(conv(STEM, F.pad(x, [2, 3, 2, 3])))
    x = F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=float("-inf")), kernel_size=3, stride=2)
    for block in BLOCKS:
        reduce, spatial, expand = block.convs
        shortcut = x if block.projection is None else conv(block.projection, x)
        # TensorFlow "same" padding: symmetric at stride 1, right/bottom only at stride 2.
        padding = [0, 1, 0, 1] if block.stride == 2 else [1, 1, 1, 1]
        y = F.relu(conv(reduce, x))
        y = F.relu(conv(spatial, F.pad(y, padding)))
        x = F.relu(conv(expand, y) + shortcut)
    logits = conv(HEAD, x).mean(dim=(2, 3))
    return torch.sigmoid(logits)


def preprocess(image: Image.Image) -> NDArray[np.float32]:
    """A1111's input: RGB, resize-and-fill to 512x512, 0–1, NHWC, batch of one."""
    pic = resize_image(image.convert("RGB"), ResizeMode.RESIZE_AND_FILL, INPUT_SIZE, INPUT_SIZE)
    return np.expand_dims(np.asarray(pic, dtype=np.float32) / 255, 0)


# ---------------------------------------------------------------------------------------------
# The tagger


class DeepDanbooruTagger(Tagger):
    """A1111's DeepDanbooru: 0.5 threshold and alphabetical order by default."""

    kind = "deepdanbooru"
    default_threshold = DEFAULT_THRESHOLD
    default_sort_alpha = True

    def __init__(self, net: torch.nn.Module, tags: Sequence[str], device: str) -> None:
        self.tags = tuple(
            TagInfo(name, CATEGORY_RATING if name.startswith(RATING_PREFIX) else None)
            for name in tags
        )
        self.device = device
        self._net: torch.nn.Module | None = net

    def predict(self, image: Image.Image) -> NDArray[np.float32]:
        import torch

        if self._net is None:
            raise RuntimeError("this tagger was unloaded")
        pixels = torch.from_numpy(preprocess(image)).to(self.device)
        with torch.inference_mode():
            scores = forward(self._net, pixels)[0]
        return scores.float().cpu().numpy()

    def unload(self) -> None:
        self._net = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def load_deepdanbooru(path: Path, *, device: str = "cpu", allow_pickle: bool = False) -> Tagger:
    """The DeepDanbooru tagger in ``path`` (a ``torch.save`` file), on ``device``.

    A pickle can run code when loaded, so it is only read when the configuration allows
    pickles, and then through the tensors-only unpickler."""
    check_pickle("tagger", str(path), path, allowed=allow_pickle)  # the resolver's one rule
    state = load_pickle(path)  # ConfigError itself for an unreadable or code-running file
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"tagger {path} holds a {type(state).__name__}, not the state dict of A1111's "
            "DeepDanbooru model"
        )
    try:
        tags = check_state_dict(state)
        net = build_network(state)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"tagger {path}: {exc}") from exc
    target = _torch_device(device)
    return DeepDanbooruTagger(net.to(target), tags, target)


def _torch_device(device: str) -> str:
    """``device`` when torch can use it; CPU when CUDA was asked for and is not there."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return device


# ---------------------------------------------------------------------------------------------
# Random weights (tests, experiments)
