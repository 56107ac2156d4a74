"""``task: sketch``: A1111's Sketch tab, strokes (``<stem>.sketch.png``, RGBA over
transparency) painted onto the input, then img2img. Images only: a video has no sketch."""

from __future__ import annotations

from daemon.intake.pairing import Kind
from daemon.tasks.keys import PaintingTaskKeys
from daemon.tasks.task import Painting, needs


class SketchKeys(PaintingTaskKeys):
    """The keys a sketch profile may set."""


TASK = Painting("sketch", SketchKeys, needs(Kind.SKETCH, takes=(Kind.MASK,)), videos=False)
