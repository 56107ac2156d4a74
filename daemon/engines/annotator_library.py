"""The annotators that run through controlnet_aux (the optional ``annotators`` extra).

Each detector is made with ``from_pretrained(<the folder that holds its files>, …)``:
given a directory, controlnet_aux joins the file names to it and never calls the hub
(``os.path.isdir(pretrained_model_or_path)`` in every ``from_pretrained``, 0.0.10), and
``local_files_only=True`` is passed as well, so that a change in the library would fail
rather than download.

The image is padded to the processor resolution first, as the extension does, and given to
the detector at that resolution: its own resize (each side rounded to a multiple of 64 by
stretching) then has nothing to do, and the map is cropped back, keeping the aspect ratio
exactly. The thresholds are passed as the extension passes them (``mlsd``: value and
distance thresholds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from daemon.controlnet.images import Pixels, hwc3, resize_with_pad

Detect = Callable[[Any, Pixels, int, float, float], Pixels]
"""(detector, padded image, resolution, threshold_a, threshold_b) → map."""


def _pidinet(folder: Path) -> Any:
    from controlnet_aux.pidi import PidiNetDetector

    return PidiNetDetector.from_pretrained(
        folder, filename="table5_pidinet.pth", local_files_only=True
    )


def _lineart_anime(folder: Path) -> Any:
    from controlnet_aux.lineart_anime import LineartAnimeDetector

    return LineartAnimeDetector.from_pretrained(folder, filename="netG.pth", local_files_only=True)


def _midas(folder: Path) -> Any:
    from controlnet_aux.midas import MidasDetector

    return MidasDetector.from_pretrained(
        folder,
        model_type="dpt_hybrid",
        filename="dpt_hybrid-midas-501f0c75.pt",
        local_files_only=True,
    )


def _normal_bae(folder: Path) -> Any:
    from controlnet_aux.normalbae import NormalBaeDetector

    return NormalBaeDetector.from_pretrained(folder, filename="scannet.pt", local_files_only=True)


def _mlsd(folder: Path) -> Any:
    from controlnet_aux.mlsd import MLSDdetector

    return MLSDdetector.from_pretrained(
        folder, filename="mlsd_large_512_fp32.pth", local_files_only=True
    )


def _openpose(folder: Path) -> Any:
    from controlnet_aux.open_pose import OpenposeDetector

    return OpenposeDetector.from_pretrained(folder, local_files_only=True)


LOADERS: dict[str, Callable[[Path], Any]] = {
    "pidinet": _pidinet,
    "pidinet_safe": _pidinet,
    "lineart_anime": _lineart_anime,
    "depth": _midas,
    "normal_bae": _normal_bae,
    "mlsd": _mlsd,
    "openpose": _openpose,
    "openpose_full": _openpose,
}

CALL_OPTIONS: dict[str, Callable[[float, float], dict[str, Any]]] = {
    "pidinet_safe": lambda _a, _b: {"safe": True},
    "mlsd": lambda a, b: {"thr_v": a, "thr_d": b},
    "openpose_full": lambda _a, _b: {"include_hand": True, "include_face": True},
}
"""What each module passes its detector beyond the image (the extension's switches)."""


def load_detector(module: str, folder: Path) -> Any:
    """controlnet_aux's detector for `module`, from the files in `folder` (ImportError
    when the library is not installed or does not import)."""
    try:
        import controlnet_aux  # noqa: F401  (imports every detector, and their libraries)
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError
        raise ImportError(f"controlnet_aux does not import: {type(exc).__name__}: {exc}") from exc
    return LOADERS[module](folder)


def run_detector(module: str, detector: Any, image: Pixels, resolution: int, a: float,
                 b: float) -> Pixels:  # fmt: skip
    """The detector's map of `image` at `resolution`, three channels, the image's aspect."""
    padded, remove_pad = resize_with_pad(image, resolution)
    options = CALL_OPTIONS.get(module, lambda _a, _b: {})(a, b)
    short = min(padded.shape[:2])  # a multiple of 64: the library's resize leaves it as it is
    detected = detector(
        padded, detect_resolution=short, image_resolution=short, output_type="np", **options
    )
    return remove_pad(hwc3(np.asarray(detected, dtype=np.uint8)))
