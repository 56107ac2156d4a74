"""``task: inpaint_sketch``: A1111's Inpaint sketch. The strokes of ``<stem>.sketch.png`` are
the mask (their opacity its strength) and their colours guide the repaint; the rest of the
image is kept. A ``<stem>.mask.png`` given as well is the mask instead. Images only."""

from __future__ import annotations

from PIL import Image

from daemon.a1111.masks import blend_sketch_for_inpaint, composite_sketch, sketch_mask
from daemon.intake.pairing import Kind
from daemon.tasks.keys import MaskKeys, PaintingTaskKeys
from daemon.tasks.task import Canvas, Painting, lay_sketch_on, needs


class InpaintSketchKeys(PaintingTaskKeys):
    """The keys an inpaint_sketch profile may set."""


def strokes_as_mask(
    image: Image.Image, sketch: Image.Image | None, mask: Image.Image | None, keys: MaskKeys
) -> Canvas:
    """Without a mask of its own, the sketch is the mask: the strokes blended into the
    image where they are, as A1111 does before inpainting."""
    if sketch is None or mask is not None:
        return lay_sketch_on(image, sketch, mask, keys)
    sketched, note = composite_sketch(image, sketch)
    strokes = sketch_mask(sketch, image.size)
    blended = blend_sketch_for_inpaint(image, sketched, strokes, keys.mask_blur)
    return Canvas(blended, strokes, (f"sketch: {note}",) if note else ())


TASK = Painting(
    "inpaint_sketch", InpaintSketchKeys, needs(Kind.SKETCH, takes=(Kind.MASK,)),
    paints_with="inpaint", videos=False, layout=strokes_as_mask,
)  # fmt: skip
