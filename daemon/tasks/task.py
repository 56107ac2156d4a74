"""What a kind of work is: the contract each task module fills in.

A task is one module of this package and one line in :mod:`daemon.tasks.registry`. It
declares, in that module:

* its profile keys: a pydantic model of its own, composed of the key groups of
  :mod:`daemon.tasks.keys` (config validates every profile through its task's model);
* its companions: which of ``<stem>.mask.png`` / ``<stem>.sketch.png`` it cannot go without
  (the intake waits for them) and which it takes when they come;
* what the model works on: a canvas laid out for a diffusion pipeline (:class:`Painting`),
  or the input as it was dropped, for an interrogator (:class:`Describing`);
* what its results deliver: the files of its output group and their contents
  (:mod:`daemon.tasks.outputs`).

This package sits below config, so that config can validate with the task's model; so a
task's behaviour is pure, decoded images and settings in, values out. Reading the inputs and
writing the outputs (atomically, journaled, with free names) stay with prepare and deliver,
which ask the task what to do instead of comparing its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

from daemon.a1111.masks import composite_sketch
from daemon.intake.pairing import Companions, Kind
from daemon.tasks.keys import CaptionKeys, CommonKeys, ImageOutputKeys, Interrogator, MaskKeys
from daemon.tasks.outputs import OutputGroup, caption_group, image_group

Pipeline = Literal["img2img", "inpaint", "edit", "edit_inpaint"]
"""The diffusers pipelines a painting task paints with (``edit``: an instruction-edit
model's; ``edit_inpaint``: the same restricted to a mask)."""


@dataclass(frozen=True)
class CompanionNeeds:
    """The companions a task cannot go without, and those it takes when they come."""

    required: frozenset[Kind] = frozenset()
    optional: frozenset[Kind] = frozenset()

    def missing(self, found: Companions) -> Kind | None:
        """The first required companion that is not among `found`."""
        return next((kind for kind in Kind if kind in self.required and not found.has(kind)), None)


def needs(*required: Kind, takes: tuple[Kind, ...] = ()) -> CompanionNeeds:
    """``needs(Kind.MASK, takes=(Kind.SKETCH,))``: a mask it cannot go without, a sketch it
    takes when one comes."""
    return CompanionNeeds(frozenset(required), frozenset(takes))


@dataclass(frozen=True)
class Canvas:
    """What a diffusion model paints on: the input with its sketch laid on, and its mask."""

    image: Image.Image
    mask: Image.Image | None = None  # L at the image's size; white = repaint
    notes: tuple[str, ...] = ()


Layout = Callable[[Image.Image, Image.Image | None, Image.Image | None, MaskKeys], Canvas]
"""(input flattened on white, sketch RGBA, mask, settings) → the canvas."""


class Described(Protocol):
    """An interrogator's finding (``daemon.engines.interrogators.Interrogation``)."""

    @property
    def line(self) -> str: ...

    def as_json(self, image_name: str) -> dict[str, Any]: ...


class Rendered(Protocol):
    """What a render gave (``daemon.render.values.RenderResult``), as a task's outputs read it."""

    @property
    def images(self) -> tuple[Image.Image, ...]: ...

    @property
    def infotexts(self) -> tuple[str, ...]: ...

    @property
    def controls(self) -> tuple[Image.Image, ...]: ...

    @property
    def alpha(self) -> Image.Image | None: ...

    @property
    def interrogation(self) -> Described | None: ...


@dataclass(frozen=True)
class Task(ABC):
    """One kind of work. `keys`: the profile keys it accepts, validated by that model."""

    name: str
    keys: type[CommonKeys]
    companions: CompanionNeeds = CompanionNeeds()

    @property
    def a_profile(self) -> str:
        """ "an inpaint profile", "a sketch profile": for messages."""
        return f"{'an' if self.name[0] in 'aeiou' else 'a'} {self.name} profile"

    @property
    def pipeline(self) -> Pipeline | None:
        """The pipeline it paints with (with only its required companions); None: it
        describes the input instead."""
        return None

    @property
    def takes_video(self) -> bool:
        return False

    def interrogator(self, chosen: Interrogator) -> Interrogator | None:
        """The interrogator whose model the profile's ``model`` names, given the profile's
        ``interrogator`` key; None for a task that paints (``model`` is a checkpoint)."""
        return None

    @abstractmethod
    def outputs(self, result: Rendered, source: Path, settings: Any) -> OutputGroup:
        """The files `result` delivers for the input `source` (named after its stem)."""


def lay_sketch_on(
    image: Image.Image, sketch: Image.Image | None, mask: Image.Image | None, _keys: MaskKeys
) -> Canvas:
    """A1111's Sketch: the strokes painted onto the image; a mask, if given, is kept."""
    if sketch is None:
        return Canvas(image, mask)
    sketched, note = composite_sketch(image, sketch)
    return Canvas(sketched, mask, (f"sketch: {note}",) if note else ())


@dataclass(frozen=True)
class Painting(Task):
    """A diffusion model repaints the input (the sketch laid on first, the mask honoured)."""

    paints_with: Pipeline = "img2img"
    videos: bool = True  # a video is painted frame by frame
    layout: Layout = lay_sketch_on

    @property
    def pipeline(self) -> Pipeline:
        return self.paints_with

    @property
    def takes_video(self) -> bool:
        return self.videos

    def canvas(
        self,
        image: Image.Image,
        *,
        sketch: Image.Image | None,
        mask: Image.Image | None,
        settings: MaskKeys,
    ) -> Canvas:
        return self.layout(image, sketch, mask, settings)

    def outputs(self, result: Rendered, source: Path, settings: ImageOutputKeys) -> OutputGroup:
        """Each image with its parameters in the file and in ``<stem>.txt``; the control
        images the render kept (``save_control``) beside each."""
        return image_group(
            source, result.images, result.infotexts, controls=result.controls,
            output_format=settings.output_format, quality=settings.output_quality,
            alpha=result.alpha,
        )  # fmt: skip


@dataclass(frozen=True)
class Describing(Task):
    """An interrogator describes the input as it was dropped: a caption, or tags."""

    fixed: Interrogator | None = None  # None: the profile's ``interrogator`` key chooses

    def interrogator(self, chosen: Interrogator) -> Interrogator | None:
        return self.fixed or chosen

    def outputs(self, result: Rendered, source: Path, settings: CaptionKeys) -> OutputGroup:
        """``<stem>.txt`` (the prompt, one line, as training tools read captions),
        ``<stem>.json`` (the details) and, with copy_image, the input itself beside them."""
        found = result.interrogation
        assert found is not None, "an interrogation result holds an interrogation"
        return caption_group(source, found.line, found.as_json(source.name),
                             copy_image=settings.copy_image)  # fmt: skip
