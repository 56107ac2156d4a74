"""Reading an input and its companions safely, and merging the settings that apply to it.

Everything wrong with the file raises InputError (the job fails with a report); a read that
fails because of the storage (a dropped share, a dying disk, the file held by another program)
raises TransientError, since it is not the file's fault.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from daemon.a1111.infotext import parse_infotext, png_info
from daemon.a1111.pnginfo import settings_from_infotext
from daemon.config.profiles import LoadedProfile, Profile
from daemon.config.yamlsafe import YamlProblem, read_mapping
from daemon.controlnet.per_image import units_from_infotext
from daemon.errors import (
    InputError,
    TransientError,
    UnreadableInput,
    is_storage_error,
    storage_reason,
)
from daemon.intake.jobs import Job
from daemon.models.builtin import CONTROLNET_BUILTINS
from daemon.prepare.prompt_file import prompt_from_file
from daemon.tasks.registry import task_of
from daemon.temporal.infotext import temporal_from_infotext

_T = TypeVar("_T")
PER_IMAGE_YAML_BYTES = 64 * 1024


def check_regular_file(path: Path, *, max_bytes: int) -> None:
    """A plain file of a sane size: never a link (links are never followed), never empty."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise TransientError(f"{path.name} vanished before it could be read") from exc
    if stat.S_ISLNK(st.st_mode):
        raise InputError(
            f"{path.name} is a symbolic link; links are never followed, copy the file itself"
        )
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path.name} is not a regular file")
    if st.st_nlink > 1:
        raise InputError(
            f"{path.name} is a hard link to another file; copy the file into the inbox instead"
        )
    if st.st_size > max_bytes:
        raise InputError(
            f"{path.name} is {st.st_size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB "
            "limit (max_input_bytes in img2imgd.yaml)"
        )
    if st.st_size == 0:
        raise UnreadableInput(f"{path.name} is empty (0 bytes)")


def storage_safe(read: Callable[..., _T], path: Path, *args: Any, **kwargs: Any) -> _T:
    """Call a loader; an I/O failure of the storage is the process's fault, not the file's."""
    try:
        return read(path, *args, **kwargs)
    except InputError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and is_storage_error(cause):
            raise TransientError(_unread(path, cause)) from exc
        raise
    except OSError as exc:
        if is_storage_error(exc):
            raise TransientError(_unread(path, exc)) from exc
        raise


def _unread(path: Path, exc: OSError) -> str:
    return f"could not read {path.name}: {storage_reason(exc, exc.strerror or str(exc))}"


@dataclass(frozen=True)
class Merged:
    """The settings of one input, where they came from, and what the user should know."""

    settings: Profile
    notes: tuple[str, ...] = ()
    parameters_model_hash: str | None = None  # use_png_info: the model the parameters name


def merge_settings(
    job: Job, profile: LoadedProfile, image: Image.Image | None, *, max_bytes: int
) -> Merged:
    """The profile, then the input's own parameters (use_png_info), then its YAML, then its
    prompt file (``<stem>.prompt.txt``)."""
    parameters: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    sources: list[str] = []
    notes: list[str] = []
    model_hash = None
    if profile.settings.use_png_info and image is not None:
        text, where = _parameters_text(job, image, max_bytes=max_bytes)
        if text is not None:
            found = settings_from_infotext(text)
            parameters.update(found.overrides)
            units, unit_notes = units_from_infotext(text, CONTROLNET_BUILTINS)
            temporal, temporal_notes = temporal_from_infotext(parse_infotext(text).params, units)
            parameters.update(temporal)
            unit_notes += temporal_notes
            if units:  # they replace the profile's, as pasting the infotext does
                parameters["controlnet"] = units
            notes += [f"{where}: {note}" for note in (*found.notes, *unit_notes)]
            sources.append(where)
            model_hash = found.model_hash  # (only a painting task reads PNG info)
    yaml_path = job.companions.settings
    if yaml_path is not None:
        check_regular_file(yaml_path, max_bytes=max_bytes)
        try:
            overrides.update(read_mapping(yaml_path, max_bytes=PER_IMAGE_YAML_BYTES))
        except YamlProblem as exc:
            raise InputError(exc.at(yaml_path.name)) from exc
        sources.append(yaml_path.name)
    prompt_path = job.companions.prompt
    if prompt_path is not None:
        data = _companion_bytes(prompt_path, max_bytes=max_bytes, empty_allowed=True)
        prompt, prompt_notes = prompt_from_file(prompt_path.name, data, task_of(profile.settings))
        if prompt is not None:
            overrides["prompt"] = prompt
            sources.append(prompt_path.name)
        notes += prompt_notes
    settings = (
        profile.with_overrides(
            overrides, Path(" + ".join(sources)), yaml=yaml_path, parameters=parameters
        )
        if parameters or overrides
        else profile.settings
    )
    return Merged(settings, tuple(notes), model_hash)


def _parameters_text(job: Job, image: Image.Image, *, max_bytes: int) -> tuple[str | None, str]:
    """A ``<stem>.txt`` beside the input wins over the image's own parameters."""
    path = job.companions.parameters
    if path is None:
        return png_info(image), job.image.name
    data = _companion_bytes(path, max_bytes=max_bytes)
    return data.decode("utf-8", errors="replace"), path.name


def _companion_bytes(path: Path, *, max_bytes: int, empty_allowed: bool = False) -> bytes:
    """A text companion's bytes, up to the per-image YAML's size limit. `empty_allowed`: an
    empty file is b"" rather than an unreadable one (a prompt file: the empty prompt)."""
    try:
        check_regular_file(path, max_bytes=max_bytes)
    except UnreadableInput:  # (raised only for an empty file, after the other checks)
        if not empty_allowed:
            raise
        return b""
    try:
        data = path.read_bytes()[: PER_IMAGE_YAML_BYTES + 1]  # (max_bytes checked above)
    except OSError as exc:
        raise TransientError(f"could not read {path.name}: {exc.strerror}") from exc
    if len(data) > PER_IMAGE_YAML_BYTES:
        raise InputError(f"{path.name} is larger than {PER_IMAGE_YAML_BYTES // 1024} KiB")
    return data
