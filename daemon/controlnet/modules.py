"""The preprocessors by name: their labels and sliders, as the extension declares them.

Pure data, so that validating a profile needs no image library. A slider the extension hides
is its ``PreprocessorParameter(visible=False)``: range 0..1, value 0.5, which is why real
infotexts say ``Threshold A: 0.5`` for modules without thresholds. The resolution slider of
every preprocessor that does not hide it is the base class's 64..2048, default 512 (legacy
preprocessors never override it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slider:
    minimum: float
    maximum: float
    value: float

    def bounded(self, given: float) -> float:
        """`given` when the slider allows it, else the slider's default (the extension's
        ``bound_check_params``: ``-1`` means "the default")."""
        return given if self.minimum <= given <= self.maximum else self.value


HIDDEN = Slider(0.0, 1.0, 0.5)
RESOLUTION = Slider(64, 2048, 512)
FIDELITY = Slider(0.0, 1.0, 0.5)  # a reference's "Style Fidelity (only for Balanced mode)"


@dataclass(frozen=True)
class Module:
    """One preprocessor: its internal name, the label the UI shows, its three sliders."""

    name: str
    label: str
    resolution: Slider = RESOLUTION
    slider_1: Slider = HIDDEN  # threshold_a
    slider_2: Slider = HIDDEN  # threshold_b
    # False: the unit acts by itself, with no ControlNet `model` (the extension's
    # ``model_free``; reference_only). Not about annotator weights (controlnet.annotators).
    uses_controlnet: bool = True


MODULES: tuple[Module, ...] = (
    Module("none", "none"),
    Module("invert", "invert (from white bg & black line)", resolution=HIDDEN),
    Module("canny", "canny", slider_1=Slider(1, 255, 100), slider_2=Slider(1, 255, 200)),
    Module("tile_resample", "tile_resample", slider_1=Slider(1.0, 8.0, 1.0)),
    Module("lineart_standard", "lineart_standard (from white bg & black line)"),
    # Removed from the extension in May 2023; infotexts of that time still name it.
    Module("binary", "binary", slider_1=Slider(0, 255, 0)),
    Module("threshold", "threshold", slider_1=Slider(0, 255, 127)),
    Module("blur_gaussian", "blur_gaussian", slider_1=Slider(0.01, 64.0, 9.0)),
    # Those that need annotator weights (daemon.controlnet.annotators): name, then the
    # label the extension shows (global_state.py's preprocessor_aliases).
    Module("lineart", "lineart_realistic"),
    Module("lineart_coarse", "lineart_coarse"),
    Module("lineart_anime", "lineart_anime"),
    Module("hed", "softedge_hed"),
    Module("hed_safe", "softedge_hedsafe"),
    Module("pidinet", "softedge_pidinet"),
    Module("pidinet_safe", "softedge_pidisafe"),
    Module("depth", "depth_midas"),
    Module("normal_bae", "normal_bae"),
    Module("openpose", "openpose"),
    Module("openpose_full", "openpose_full"),
    Module("mlsd", "mlsd", slider_1=Slider(0.01, 2.0, 0.1), slider_2=Slider(0.01, 20.0, 0.1)),
    # The reference image itself steers self-attention; threshold_a is its Style Fidelity.
    Module("reference_only", "reference_only", HIDDEN, FIDELITY, uses_controlnet=False),
    # The input with the inpaint mask marked (daemon.controlnet.masked), for inpaint models.
    Module("inpaint", "inpaint_global_harmonious", resolution=HIDDEN),
    Module("inpaint_only", "inpaint_only", resolution=HIDDEN),
)

UNSUPPORTED = {
    "inpaint_only+lama": "it fills the mask with the LaMa inpainting network, whose weights "
    "img2imgd does not run; use inpaint_only (or inpaint_global_harmonious) instead",
}
"""Preprocessors of the extension that img2imgd knows but does not run, and why."""

_BY_NAME = {module.name: module for module in MODULES}
_BY_LABEL = {module.label: module for module in MODULES}


def module_named(name: str) -> Module:
    """The preprocessor `name` or `label` names (as the extension, either is accepted);
    ValueError listing the known names otherwise."""
    found = _BY_NAME.get(name) or _BY_LABEL.get(name)
    if found is None and name in UNSUPPORTED:
        raise ValueError(f"ControlNet preprocessor {name} is not supported: {UNSUPPORTED[name]}")
    if found is None:
        known = ", ".join(module.name for module in MODULES)
        raise ValueError(f"unknown ControlNet preprocessor {name!r}; known: {known}")
    return found
