"""``task: edit``: the prompt is an instruction ("make it night", "remove the cup"), applied
to the input by an instruction-edit model: Flux Kontext, or Qwen-Image-Edit (and Edit Plus,
which also takes ``<stem>.reference.png`` and ``<stem>.reference-<n>.png`` as further
images to draw from). The instruction is the profile's ``prompt``, or the input's own
``<stem>.prompt.txt``, as an artist saves it beside the image.

A ``<stem>.mask.png`` restricts the edit to its white part, through the model's inpaint
variant; a ``<stem>.sketch.png`` is painted onto the input first. The result has the job's
processing size (the profile's size rules, multiples of 16), whatever size the model paints
at. Images only: a video is not edited frame by frame.
"""

from __future__ import annotations

from daemon.intake.pairing import Kind
from daemon.tasks.keys import PaintingTaskKeys
from daemon.tasks.task import Painting, needs


class EditKeys(PaintingTaskKeys):
    """The keys an edit profile may set (img2img's: ``denoising_strength`` applies only
    under a mask; an edit without one starts from noise)."""


TASK = Painting(
    "edit",
    EditKeys,
    needs(takes=(Kind.MASK, Kind.SKETCH, Kind.REFERENCE)),
    paints_with="edit",
    videos=False,
)
