"""The built-in tiny tagger: a random WD14-style ONNX model with a short, designed tag list."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from daemon.models.layouts import WD14_MODEL, WD14_TAGS

TINY_SIZE = 64
# (tag_id, name, category, count, bias): the bias is the tag's logit for a mid-grey image, so
# the tiny model's scores spread from ~0.03 to ~0.97 and every threshold test means something.
# The image itself moves each logit by a few tenths at most.
_TINY_TAGS: tuple[tuple[int, str, int, int, float], ...] = (
    (9999999, "general", 9, 807_691, 2.0),
    (9999998, "sensitive", 9, 505_372, 0.3),
    (9999997, "questionable", 9, 152_308, -1.5),
    (9999996, "explicit", 9, 110_215, -3.0),
    (470575, "1girl", 0, 4_280_934, 3.2),
    (212816, "solo", 0, 3_536_544, 2.8),
    (13197, "long_hair", 0, 2_911_282, 2.2),
    (3389, "smile", 0, 1_711_264, 1.6),
    (16751, "blush", 0, 1_568_092, 1.2),
    (1821, "looking_at_viewer", 0, 1_600_911, 0.9),
    (8601, "open_mouth", 0, 1_298_543, 0.5),
    (16867, "brown_hair", 0, 813_202, 0.1),
    (16578, "blue_eyes", 0, 811_221, -0.2),
    (15080, "short_hair", 0, 1_014_392, -0.5),
    (4563, "simple_background", 0, 777_300, -0.8),
    (515193, "white_background", 0, 627_221, -1.1),
    (2585, "shirt", 0, 607_733, -1.4),
    (15425, "skirt", 0, 521_288, -1.7),
    (395, "outdoors", 0, 459_312, -2.0),
    (3802, "sky", 0, 258_044, -2.4),
    (4117, "tree", 0, 133_710, -2.8),
    (3598, "flower", 0, 233_115, -3.2),
    (401228, ":d", 0, 241_507, 0.0),
    (1345229, "^_^", 0, 52_813, 0.7),
    (444539, ">_<", 0, 29_170, -0.7),
    (1478897, "hatsune_miku_(cosplay)", 0, 7_455, 0.4),
    (14087, "hatsune_miku", 4, 121_355, 2.6),
    (15099, "kagamine_rin", 4, 26_742, 1.0),
    (464570, "hakurei_reimu", 4, 63_241, -0.3),
    (14543, "kirisame_marisa", 4, 49_118, -2.6),
)


def tiny_tag_rows() -> list[tuple[int, str, int, int]]:
    """The tiny tagger's ``selected_tags.csv`` rows (tag_id, name, category, count)."""
    return [(tag_id, name, category, count) for tag_id, name, category, count, _ in _TINY_TAGS]


def build_tiny_tagger(folder: Path) -> None:
    """Write a tiny random WD14-style tagger (``model.onnx``, ``selected_tags.csv``) into the
    empty ``folder`` (made if missing). Same bytes every time.

    The network takes NHWC BGR 0–255 at 64x64 with a dynamic batch axis: two strided
    convolutions, a global average and a linear layer whose biases are the designed logits of
    :data:`_TINY_TAGS`, then a sigmoid, as the real taggers end."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty; the tiny tagger is written into an empty folder")

    class TinyTagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, kernel_size=4, stride=4),
                torch.nn.Tanh(),
                torch.nn.Conv2d(8, 16, kernel_size=4, stride=4),
                torch.nn.Tanh(),
            )
            self.head = torch.nn.Linear(16, len(_TINY_TAGS))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2) / 127.5 - 1.0  # NHWC 0–255 → NCHW -1..1
            x = self.features(x).mean(dim=(2, 3))
            return torch.sigmoid(self.head(x))

    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(0)
        model = TinyTagger().eval()
        with torch.no_grad():
            model.head.weight.mul_(4.0)  # so that the image moves each logit a little
            model.head.bias.copy_(torch.tensor([row[4] for row in _TINY_TAGS]))
        example = torch.full((1, TINY_SIZE, TINY_SIZE, 3), 127.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
            torch.onnx.export(
                model,
                (example,),
                str(folder / WD14_MODEL),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                dynamo=False,
            )
    with (folder / WD14_TAGS).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows(tiny_tag_rows())
