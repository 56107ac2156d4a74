"""The preprocessors that need annotator weights: which files, where they are looked for.

Pure data and path lookups, so that ``check`` and the preflight can say what is missing
without torch. The extension downloads these files on first use
(``annotator/util.py`` ``load_model``); img2imgd never downloads: a missing file is named,
with the folder to put it in, and the inputs that need it wait.

Where the files are looked for, given ``models_dir`` (an A1111 ``models`` folder), first
found wins:

* ``models_dir/annotators/<folder>/<file>``: img2imgd's own place, the same sub-layout as
  the extension's, so its ``downloads`` folder can be copied in as it is;
* ``models_dir/../extensions/sd-webui-controlnet/annotator/downloads/<folder>/<file>``: the
  extension's default (``annotator/annotator_path.py``: ``control_net_modules_path``, else
  ``--controlnet-annotator-models-path``, else this folder);
* ``models_dir/../extensions/sd-webui-controlnet/annotator/<folder>/<file>``: where older
  versions kept hed, pidinet, midas, mlsd and leres (``old_modeldir``).

The file names and folders are the extension's (``scripts/preprocessor/legacy/processor.py``
and ``annotator/<folder>/__init__.py``: ``remote_model_path`` and ``modeldir``), which are
the files of the public ``lllyasviel/Annotators`` repository. The networks run either from
img2imgd's own copy of the network class (``builtin``: lineart, HED) or through the
``controlnet_aux`` library (the ``annotators`` extra), given the folder so that it never
calls the hub.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.controlnet.modules import module_named
from daemon.errors import ConfigError

OWN_FOLDER = "annotators"
EXTENSION = Path("extensions") / "sd-webui-controlnet" / "annotator"
EXTRA = "annotators"
"""The optional dependency group that installs controlnet_aux."""


@dataclass(frozen=True)
class Annotator:
    """A preprocessor's weights: the folder and files under the annotator root, and how
    the network runs (``builtin``: img2imgd's copy of its class; else the controlnet_aux
    detector class, as ``module:Class``)."""

    folder: str
    files: tuple[str, ...]
    runner: str
    source: str = "https://huggingface.co/lllyasviel/Annotators"  # for messages only

    @property
    def builtin(self) -> bool:
        return self.runner == "builtin"


_LINEART = Annotator("lineart", ("sk_model.pth",), "builtin")
_HED = Annotator("hed", ("ControlNetHED.pth",), "builtin")
_PIDINET = Annotator("pidinet", ("table5_pidinet.pth",), "controlnet_aux.pidi:PidiNetDetector")
_OPENPOSE = Annotator(
    "openpose",
    ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "controlnet_aux.open_pose:OpenposeDetector",  # its from_pretrained loads all three
)

ANNOTATORS: dict[str, Annotator] = {
    # legacy/processor.py: lineart() loads sk_model.pth, lineart_coarse() sk_model2.pth
    "lineart": _LINEART,
    "lineart_coarse": Annotator("lineart", ("sk_model2.pth",), "builtin"),
    # annotator/hed: ControlNetHED_Apache2, one file for hed, hed_safe (and scribble_hed)
    "hed": _HED,
    "hed_safe": _HED,
    "pidinet": _PIDINET,
    "pidinet_safe": _PIDINET,
    "lineart_anime": Annotator(
        "lineart_anime", ("netG.pth",), "controlnet_aux.lineart_anime:LineartAnimeDetector"
    ),
    "depth": Annotator(
        "midas",
        ("dpt_hybrid-midas-501f0c75.pt",),
        "controlnet_aux.midas:MidasDetector",
        "https://huggingface.co/lllyasviel/ControlNet/tree/main/annotator/ckpts",
    ),
    "normal_bae": Annotator(
        "normal_bae", ("scannet.pt",), "controlnet_aux.normalbae:NormalBaeDetector"
    ),
    "mlsd": Annotator(
        "mlsd",
        ("mlsd_large_512_fp32.pth",),
        "controlnet_aux.mlsd:MLSDdetector",
        "https://huggingface.co/lllyasviel/ControlNet/tree/main/annotator/ckpts",
    ),
    "openpose": _OPENPOSE,
    "openpose_full": _OPENPOSE,
}
"""By the extension's internal module name (labels are mapped by
:func:`daemon.controlnet.modules.module_named`)."""


def annotator_of(module: str) -> Annotator | None:
    """The weights preprocessor `module` (internal name) needs; None for a model-free one."""
    return ANNOTATORS.get(module)


def annotator_roots(models_dir: Path | None) -> tuple[Path, ...]:
    """The folders annotator files are looked for in, in order (none without models_dir)."""
    if models_dir is None:
        return ()
    extension = models_dir.parent / EXTENSION
    return (models_dir / OWN_FOLDER, extension / "downloads", extension)


class AnnotatorMissing(ConfigError):
    """An annotator's weight file is on none of the roots: not the input's fault."""


def annotator_folder(module: str, roots: Sequence[Path]) -> Path:
    """The folder that holds every file preprocessor `module` needs.

    AnnotatorMissing names the missing file, where it was looked for, where to put it
    and where it comes from; it never downloads."""
    annotator = ANNOTATORS[module]
    for root in roots:
        folder = root / annotator.folder
        if all((folder / name).is_file() for name in annotator.files):
            return folder
    raise AnnotatorMissing(missing_message(module, annotator, roots))


def missing_message(module: str, annotator: Annotator, roots: Sequence[Path]) -> str:
    """What is missing for `module`, and the one step that fixes it (the preprocessor by the
    label the extension shows, e.g. ``softedge_hed`` for ``hed``)."""
    files = " and ".join(annotator.files)
    module = module_named(module).label
    if not roots:
        return (
            f"ControlNet preprocessor {module} needs the annotator file {files}: set "
            f"models_dir in the config, then put it in <models_dir>/{OWN_FOLDER}/"
            f"{annotator.folder}/ (img2imgd never downloads it; it is at {annotator.source})"
        )
    looked = ", ".join(str(root / annotator.folder) for root in roots)
    home = roots[0] / annotator.folder
    return (
        f"ControlNet preprocessor {module} needs the annotator file {files}, found in none "
        f"of {looked}: put it in {home}/ (img2imgd never downloads it; it is at "
        f"{annotator.source})"
    )


def library_missing(module: str) -> str:
    """The message for a preprocessor whose runner is controlnet_aux, not installed."""
    return (
        f"ControlNet preprocessor {module_named(module).label} runs through the "
        f"controlnet_aux library, which is not installed: pip install 'img2imgd[{EXTRA}]' "
        "(or pick another preprocessor)"
    )


def library_installed() -> bool:
    """Whether controlnet_aux can be imported (looked up, not imported: that takes seconds)."""
    return importlib.util.find_spec("controlnet_aux") is not None


def check_annotator(module: str, models_dir: Path | None) -> Path:
    """The folder of preprocessor `module`'s files (internal name), as the render side will
    find it; AnnotatorMissing naming the missing file, or the missing library."""
    folder = annotator_folder(module, annotator_roots(models_dir))
    if not ANNOTATORS[module].builtin and not library_installed():
        raise AnnotatorMissing(library_missing(module))
    return folder
