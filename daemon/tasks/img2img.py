"""``task: img2img`` (the default): A1111's img2img tab, the input repainted from a prompt.

A ``<stem>.mask.png`` dropped with the input makes it an inpaint job, and a
``<stem>.sketch.png`` is painted onto it first; neither is needed.
"""

from __future__ import annotations

from daemon.intake.pairing import Kind
from daemon.tasks.keys import PaintingTaskKeys
from daemon.tasks.task import Painting, needs


class Img2ImgKeys(PaintingTaskKeys):
    """The keys an img2img profile may set."""


TASK = Painting("img2img", Img2ImgKeys, needs(takes=(Kind.MASK, Kind.SKETCH)))
