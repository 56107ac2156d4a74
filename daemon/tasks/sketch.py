"""``task: sketch``: A1111's Sketch tab, strokes (``<stem>.sketch.png``, RGBA over
transparency) painted onto the input, then img2img. Images only: a video has no sketch."""

from __future__ import annotations

from daemon.intake.pairing import Kind
from daemon.tasks.keys import PaintingTaskKeys
from daemon.tasks.task import CompanionNeeds, Painting


class SketchKeys(PaintingTaskKeys):
    """The keys a sketch profile may set."""


TASK = Painting(
    name="sketch",
    keys=SketchKeys,
    companions=CompanionNeeds(required=frozenset({Kind.SKETCH}), optional=frozenset({Kind.MASK})),
    paints_with="img2img",
    videos=False,
)
