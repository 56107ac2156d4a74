"""``task: inpaint``: A1111's Inpaint upload, the input repainted where ``<stem>.mask.png``
(or ``masks/<stem>.png``) is white. A video takes one mask for every frame."""

from __future__ import annotations

from daemon.intake.pairing import Kind
from daemon.tasks.keys import PaintingTaskKeys
from daemon.tasks.task import Painting, needs


class InpaintKeys(PaintingTaskKeys):
    """The keys an inpaint profile may set."""


TASK = Painting(
    "inpaint", InpaintKeys, needs(Kind.MASK, takes=(Kind.SKETCH,)), paints_with="inpaint"
)
