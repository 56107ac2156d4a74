"""The separate parts a flow family's single file needs: text encoders, VAE and tokenizers.

A transformer-only file (ComfyUI's ``models/diffusion_models``) needs its text encoders and
VAE as the files ComfyUI and Forge keep beside it, and T5's or Qwen's tokenizer, which no
weight file carries. An all-in-one file (Forge / civitai) carries what its header lists
(:class:`daemon.models.flow_files.FlowFile`); only what it lacks is looked for.

The rule, one for everything: each part is found **by its usual name** in the folders of its
kind (:data:`daemon.models.resolve.kinds.KINDS`: ``text_encoder``, ``vae``, ``tokenizer``):

* text encoders: a file or folder whose name starts with ``clip_l``, ``clip_g``, ``t5xxl``
  or ``qwen_2.5_vl`` (ComfyUI's names: ``t5xxl_fp16.safetensors``,
  ``qwen_2.5_vl_7b_fp8_scaled.safetensors``), in ``text_encoders/``, ``clip/`` or
  ``text_encoder/`` of ``models_dir``; a full-precision file wins over an fp8 one;
* VAE: the profile's ``vae:`` when set, else ``ae`` / ``flux…`` (Flux), ``sd3…`` (SD 3.5),
  ``qwen_image_vae…`` (Qwen-Image) in ``VAE/`` or ``vae/``;
* tokenizers: ``models_dir/tokenizers/<t5|qwen25>/``, else the ones ComfyUI
  (``comfy/text_encoders/t5_tokenizer``, ``qwen25_tokenizer``) or Forge
  (``backend/huggingface/…/tokenizer_2``) ship, beside their ``models`` folder.

Nothing is loaded here: only names and folders, so ``check`` and the preflight stay fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from daemon.models.flow_files import FlowFile
from daemon.models.resolve import Search, kind_folders
from daemon.models.resolve.kinds import SAFE_SUFFIXES

ENCODERS = {
    "flux": ("clip_l", "t5xxl"),
    "sd3": ("clip_l", "clip_g", "t5xxl"),
    "qwen": ("qwen_2.5_vl",),
}
_VAE_NAMES = {
    "flux": ("ae", "flux"),
    "sd3": ("sd3", "sd3.5"),
    "qwen": ("qwen_image_vae", "qwen_image"),
}
_TOKENIZER_OF = {"flux": "t5", "sd3": "t5", "qwen": "qwen25"}
_TOKENIZER_PLACES = {
    # name -> folders under the tokenizer kind's folders (the first that has the files wins)
    "t5": ("t5", "t5_tokenizer", "tokenizer_2", "tokenizer_3"),
    "qwen25": ("qwen25", "qwen25_tokenizer"),
}
_TOKENIZER_FILES = {"t5": ("tokenizer.json",), "qwen25": ("vocab.json", "merges.txt")}
_TOKENIZER_SOURCE = {
    "t5": "google/t5-v1_1-xxl's, as black-forest-labs/FLUX.1-dev ships it in tokenizer_2/",
    "qwen25": "Qwen/Qwen2.5-VL-7B-Instruct's, as Qwen/Qwen-Image ships it in tokenizer/",
}


def group(variant: str) -> str:
    """flux / sd3 / qwen: the families whose parts are alike."""
    return "sd3" if variant.startswith("sd3") else variant.split("-")[0]


@dataclass
class FlowParts:
    """What a flow file is loaded with; ``missing`` says, one line each, what is not there."""

    encoders: dict[str, Path | None] = field(default_factory=dict)  # None: inside the file
    vae: Path | None = None  # None: the file's own
    tokenizer: Path | None = None  # the T5 / Qwen tokenizer folder
    missing: list[str] = field(default_factory=list)

    @property
    def modules(self) -> list[Path]:
        """The separate files (or folders) used, in the order Forge lists its ``Module 1..n``:
        the VAE, then the text encoders."""
        return [p for p in (self.vae, *self.encoders.values()) if p is not None]


def find_parts(
    model: Path, flow: FlowFile, search: Search, *, vae: Path | None = None
) -> FlowParts:
    """The parts of `flow` (file `model`): those it lacks found by the module's rule; `vae`
    is the profile's when it names one."""
    kind = group(flow.variant)
    parts = FlowParts()
    models_dir = search.models_dir
    encoder_folders = kind_folders("text_encoder", models_dir)
    for name in ENCODERS.get(kind, ()):
        if name in flow.text_encoders:
            parts.encoders[name] = None
            continue
        found = _by_name(encoder_folders, (name,))
        parts.encoders[name] = found
        if found is None:
            parts.missing.append(
                f"{model.name} ({flow.label}) needs the text encoder {name}: put "
                f"{_example(name)} into {_where(encoder_folders, 'text_encoders', models_dir)}"
            )
    if vae is not None:
        parts.vae = vae
    elif flow.vae_prefix is None:
        vae_folders = kind_folders("vae", models_dir)
        parts.vae = _by_name(vae_folders, _VAE_NAMES.get(kind, ()))
        if parts.vae is None:
            parts.missing.append(
                f"{model.name} ({flow.label}) has no VAE of its own: put {_vae_example(kind)} "
                f"into {_where(vae_folders, 'VAE', models_dir)}, or set the profile's `vae:`"
            )
    tokenizer = _TOKENIZER_OF.get(kind)
    if tokenizer is not None:
        parts.tokenizer = find_tokenizer(tokenizer, search)
        if parts.tokenizer is None:
            parts.missing.append(missing_tokenizer(tokenizer, flow.label, models_dir))
    return parts


def find_tokenizer(name: str, search: Search) -> Path | None:
    """The folder of tokenizer `name` (t5, qwen25) with its files, None when nowhere."""
    for folder in kind_folders("tokenizer", search.models_dir):
        for place in _TOKENIZER_PLACES[name]:
            candidate = folder / place
            if all((candidate / f).is_file() for f in _TOKENIZER_FILES[name]):
                return candidate
    return None


def missing_tokenizer(name: str, label: str, models_dir: Path | None) -> str:
    files = " and ".join(_TOKENIZER_FILES[name])
    target = (
        f"{models_dir}/tokenizers/{name}/" if models_dir else f"<models_dir>/tokenizers/{name}/"
    )
    return (
        f"{label} needs the {'T5' if name == 't5' else 'Qwen2.5'} tokenizer, which no weight file "
        f"carries: put {files} ({_TOKENIZER_SOURCE[name]}) into {target}, or point models_dir "
        "at a ComfyUI or Forge install's models folder (they ship it); nothing is downloaded"
    )


def _by_name(folders: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first weight file or config folder, through `folders` in order, whose lower-case
    name is one of `names` or starts with one followed by ``_ - .`` (``t5xxl_fp16``);
    full precision before fp8 within a folder."""
    for folder in folders:
        if not folder.is_dir():
            continue
        hits = [entry for entry in folder.iterdir() if _usable(entry) and _named(entry, names)]
        if hits:
            return sorted(hits, key=lambda p: ("fp8" in p.name.lower(), p.name))[0]
    return None


def _usable(entry: Path) -> bool:
    if entry.is_file():
        return entry.suffix.lower() in SAFE_SUFFIXES
    return (entry / "config.json").is_file()


def _named(entry: Path, names: Sequence[str]) -> bool:
    stem = (entry.stem if entry.is_file() else entry.name).lower()
    return any(stem == n or stem.startswith((f"{n}_", f"{n}-", f"{n}.")) for n in names)


def _where(folders: Sequence[Path], usual: str, models_dir: Path | None) -> str:
    if models_dir is None:
        return f"<models_dir>/{usual} (set models_dir to find parts by name)"
    return next((str(f) for f in folders if f.name == usual), str(models_dir / usual))


def _example(name: str) -> str:
    return {
        "clip_l": "clip_l.safetensors",
        "clip_g": "clip_g.safetensors",
        "t5xxl": "t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors)",
        "qwen_2.5_vl": "qwen_2.5_vl_7b.safetensors (or its fp8 file)",
    }[name]


def _vae_example(kind: str) -> str:
    return {
        "flux": "ae.safetensors (Flux's VAE)",
        "sd3": "the SD 3.5 VAE (sd3_vae.safetensors)",
        "qwen": "qwen_image_vae.safetensors",
    }.get(kind, "its VAE")
