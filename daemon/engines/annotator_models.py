"""The warm annotators: each preprocessor's network loaded once, kept while it is used.

A preprocessor that needs annotator weights (:mod:`daemon.controlnet.annotators`) finds its
files under the annotator roots; a file that is not there, or a library that is not
installed, is not the input's fault: TransientError, the input waits in the inbox and the
log names the file and where to put it (the preflight and ``check`` say the same before any
job is taken, from the same lookup). Nothing is ever downloaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from daemon.controlnet.annotators import (
    ANNOTATORS,
    Annotator,
    AnnotatorMissing,
    annotator_folder,
    annotator_of,
    annotator_roots,
    library_missing,
)
from daemon.controlnet.images import Pixels
from daemon.engines import annotator_library, annotator_nets
from daemon.errors import TransientError, is_out_of_memory


@dataclass
class LoadedAnnotator:
    detector: Any  # a torch network (builtin) or a controlnet_aux detector
    last_used: float = 0.0


def _not_timed(_name: str, _seconds: float) -> None:
    return None


@dataclass
class Annotators:
    """Loaded annotators by preprocessor, found under ``models_dir``'s annotator roots.
    Used by the thread that renders; `device` is asked on the first load."""

    models_dir: Path | None
    device: Callable[[], str]
    on_load: Callable[[str, float], None] = _not_timed
    # by the weights, so that modules sharing a file (hed, hed_safe) share the network
    _loaded: dict[Annotator, LoadedAnnotator] = field(default_factory=dict)

    def detect(self, module: str, image: Pixels, resolution: int, a: float, b: float) -> Pixels:
        """Preprocessor `module`'s map of `image` (internal name; see ``module_named``)."""
        detector = self._get(module)
        annotator = ANNOTATORS[module]
        if not annotator.builtin:
            return annotator_library.run_detector(module, detector, image, resolution, a, b)
        if annotator.folder == "hed":
            return annotator_nets.run_hed(detector, image, resolution, safe=module == "hed_safe")
        return annotator_nets.run_lineart(detector, image, resolution)

    def _get(self, module: str) -> Any:
        annotator = annotator_of(module)
        assert annotator is not None, f"{module} needs no annotator"
        loaded = self._loaded.get(annotator)
        if loaded is None:
            loaded = self._loaded[annotator] = LoadedAnnotator(self._load(module, annotator))
        loaded.last_used = time.monotonic()
        return loaded.detector

    def _load(self, module: str, annotator: Annotator) -> Any:
        try:
            folder = annotator_folder(module, annotator_roots(self.models_dir))
        except AnnotatorMissing as exc:
            raise TransientError(f"{exc}; the input waits in the inbox") from exc
        started = time.monotonic()
        try:
            if annotator.builtin:
                weights = folder / annotator.files[0]
                detector = annotator_nets.load_network(annotator.folder, weights, self.device())
            else:
                detector = annotator_library.load_detector(module, folder)
                detector = detector.to(self.device())
        except ImportError as exc:
            raise TransientError(f"{library_missing(module)} ({exc}); the input waits") from exc
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            said = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TransientError(
                f"could not load the annotator of ControlNet preprocessor {module} from "
                f"{folder}: {type(exc).__name__}: {said}; replace the file (the input waits)"
            ) from exc
        seconds = time.monotonic() - started
        logger.info("loaded annotator {} ({}) in {:.1f} s", module, folder, seconds)
        self.on_load(_name(annotator), seconds)
        return detector

    def unload_idle(self, max_idle: float, *, now: float) -> list[str]:
        idle = [key for key, item in self._loaded.items() if now - item.last_used >= max_idle]
        for key in idle:
            del self._loaded[key]
        return [_name(key) for key in idle]

    def unload_all(self) -> None:
        self._loaded.clear()

    @property
    def loaded(self) -> list[str]:
        return [_name(key) for key in self._loaded]


def _name(annotator: Annotator) -> str:
    """How the log and the metrics name a loaded annotator: by its first file."""
    return f"annotator {annotator.folder}/{annotator.files[0]}"
