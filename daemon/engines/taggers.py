"""A tagger from its files, whichever format they are: WD14 (ONNX) or A1111's DeepDanbooru."""

from __future__ import annotations

from pathlib import Path

from daemon.engines.deepdanbooru import load_deepdanbooru
from daemon.engines.tagger import TORCH_SUFFIXES, Tagger, load_wd14
from daemon.errors import ConfigError
from daemon.models.layouts import WD14_MODEL, WD14_TAGS


def load_tagger(path: Path, *, device: str = "cpu", allow_pickle: bool = False) -> Tagger:
    """The tagger at ``path``, whichever format it is.

    * a folder with ``model.onnx`` and ``selected_tags.csv`` (or that ``model.onnx`` itself)
      → WD14, run with onnxruntime;
    * a ``.pt``/``.pth``/``.ckpt`` file, or a folder holding exactly one
      (A1111's ``models/torch_deepdanbooru/``) → DeepDanbooru, if ``allow_pickle``.

    ConfigError, naming the path, for anything else or a file that cannot be loaded."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".onnx" and (path.parent / WD14_TAGS).is_file():
        path = path.parent
    if path.is_dir() and (path / WD14_MODEL).is_file() and (path / WD14_TAGS).is_file():
        return load_wd14(path, device=device)

    torch_file = _torch_file(path)
    if torch_file is not None:
        return load_deepdanbooru(torch_file, device=device, allow_pickle=allow_pickle)

    expected = (
        f"a WD14 tagger folder ({WD14_MODEL} and {WD14_TAGS}) or A1111's DeepDanbooru "
        "model (a .pt file, or a folder holding one)"
    )
    if not path.exists():
        raise ConfigError(f"tagger {path} does not exist; expected {expected}")
    raise ConfigError(f"tagger {path} is not a tagger; expected {expected}")


def _torch_file(path: Path) -> Path | None:
    """The DeepDanbooru file ``path`` is or holds; ConfigError when a folder holds several."""
    if path.is_file():
        return path if path.suffix.lower() in TORCH_SUFFIXES else None
    if not path.is_dir():
        return None
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TORCH_SUFFIXES)
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ConfigError(
            f"tagger folder {path} holds several model files ({names}); name the one to use"
        )
    return found[0] if found else None
