"""Profiles: one YAML file per inbox folder, keyed with A1111's API names.

``profiles/<name>.yaml`` serves ``inbox/<name>/``. A profile may ``extends:`` another (files
whose names start with ``_`` are bases only). Profiles are re-read when their files change,
so an edit takes effect for the next job without a restart. Validation reports the file, the
key and what is allowed; ``check_all`` collects every problem of every profile at once.

A profile's ``task`` (:mod:`daemon.tasks.registry`) decides which keys it may set: each task
validates them with its own key model, and a key that only other tasks use is reported as
such where the profile itself (or a per-image YAML) writes it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, field_validator

from daemon.config.validation import Where, describe, located, not_used
from daemon.config.yamlsafe import YamlProblem, key_lines, read_mapping
from daemon.controlnet.ip_adapter_keys import IPAdapterKeys
from daemon.controlnet.per_image import unit_from_input_problem
from daemon.controlnet.units import ControlNetKeys
from daemon.errors import ConfigError, InputError
from daemon.intake.pairing import Kind
from daemon.paths import shown
from daemon.tasks.keys import (
    CaptionKeys,
    CommonKeys,
    ImageOutputKeys,
    Interrogator,
    InterrogatorKeys,
    MaskKeys,
    PaintingKeys,
    PromptSourceKeys,
    SequenceKeys,
)
from daemon.tasks.registry import DEFAULT_TASK, TASKS, task_of
from daemon.temporal.keys import TemporalKeys

MAX_EXTENDS_DEPTH = 8
# Per-image YAML sits in the inbox, which anyone who can drop a file can write: it may tune
# the generation but never choose which files are loaded.
# ControlNet units name models too: an input's own units name them by name only
# (daemon/controlnet/per_image.py).
NOT_PER_IMAGE = frozenset(
    {"model", "vae", "extends", "interrogate_model", "tagger_model", "labels_dir", "ip_adapter",
     "offload"}
)  # fmt: skip


class Profile(
    CommonKeys,
    PaintingKeys,
    MaskKeys,
    ImageOutputKeys,
    SequenceKeys,
    InterrogatorKeys,
    CaptionKeys,
    PromptSourceKeys,
    ControlNetKeys,
    IPAdapterKeys,
    TemporalKeys,
):
    """The effective settings of one job: every key group, so every key has a value (A1111's
    img2img UI defaults for those its task does not use). Profiles are validated through
    their task's own key model first (:func:`task_settings`); what comes out is this."""

    task: str = DEFAULT_TASK

    @field_validator("task")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in TASKS:
            names = [f"'{name}'" for name in TASKS]
            raise ValueError(f"Input should be {', '.join(names[:-1])} or {names[-1]}")
        return value

    @property
    def interrogating(self) -> Interrogator | None:
        """The interrogator whose model ``model`` is (a task that describes the input);
        None when the task paints and ``model`` is a diffusion model."""
        return task_of(self).interrogator(self.interrogator)

    def interrogation_model(self, kind: Interrogator) -> str:
        """The model `kind` uses: ``model`` when this profile's task runs that interrogator,
        else the ``interrogate_model`` / ``tagger_model`` key."""
        model: str = getattr(self, self.model_key(kind))
        return model

    def model_key(self, kind: Interrogator) -> str:
        """The key that names the model of interrogator `kind` (for messages)."""
        if self.interrogating == kind:
            return "model"
        return "interrogate_model" if kind == "clip" else "tagger_model"

    def fingerprint(self) -> bytes:
        """The settings as canonical bytes (keys sorted), for content digests that must not
        change when the key groups are declared in another order."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()

    @property
    def needs_mask(self) -> bool:
        return Kind.MASK in task_of(self).companions.required

    @property
    def needs_sketch(self) -> bool:
        return Kind.SKETCH in task_of(self).companions.required


PROFILE_KEYS = (*Profile.model_fields, "extends")
"""Every key a profile may set, for "did you mean" hints."""


class KeyProblems(ValueError):
    """Every problem of a set of keys, one line each (``file:line: …``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0])
        self.problems = problems


def task_settings(
    raw: Mapping[str, Any],
    source: Path | str,
    *,
    where: Where | None = None,
    reported: Collection[str] = (),
) -> Profile:
    """`raw` validated by its task's own key model, as the effective settings.

    A key of another task that this one does not use is a problem where it is among
    `reported` (written for this profile: its own file, a per-image YAML), and dropped
    anywhere else (a base that profiles of several tasks share, the input's PNG parameters).
    `source` and `where` say where each key was written, for the messages."""
    name = raw.get("task", DEFAULT_TASK)
    task = TASKS.get(name) if isinstance(name, str) else None
    if task is None:  # no such task: the complete model says which there are, with the rest
        raise KeyProblems(_problems(Profile, raw, source, where, known=PROFILE_KEYS))
    accepted = task.keys.model_fields
    unused = [key for key in raw if key in Profile.model_fields and key not in accepted]
    problems = [not_used(key, task.name, source, where) for key in unused if key in reported]
    used = {key: value for key, value in raw.items() if key not in unused}
    try:
        keys = task.keys.model_validate({**used, "task": task.name})
    except ValidationError as exc:
        problems += describe(exc, source, known=(*accepted, "extends"), where=where)
    if problems:
        raise KeyProblems(problems)
    return Profile.model_validate(keys.model_dump())


def _problems(
    model: type[BaseModel], raw: Mapping[str, Any], source: Path | str, where: Where | None,
    *, known: Collection[str],
) -> list[str]:  # fmt: skip
    try:
        model.model_validate(raw)
    except ValidationError as exc:
        return describe(exc, source, known=known, where=where)
    raise AssertionError(f"{model.__name__} took what it should refuse")


@dataclass(frozen=True)
class LoadedProfile:
    name: str
    settings: Profile
    raw: dict[str, Any]  # merged keys before validation, so per-image YAML can be laid over
    files: tuple[Path, ...]  # the profile and the ones it extends, for change detection

    def where(self, key: str) -> str:
        """``file:line`` where this profile, or one it extends, sets `key` (for messages)."""
        path, line = _where(self.files).get(key, (self.files[0], 0))
        return f"{shown(path)}:{line}" if line else shown(path)

    def with_overrides(
        self,
        overrides: Mapping[str, Any],
        source: Path,
        *,
        yaml: Path | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Profile:
        """The profile with an input's own settings laid over it: `parameters` (its PNG
        info, use_png_info), then `overrides` (its YAML); any problem is the file's fault.
        `source` names where they came from; `yaml` is the per-image YAML, whose lines the
        problems point at. Parameters the task does not use are dropped; YAML keys it does
        not use are a problem."""
        parameters = parameters or {}
        forbidden = sorted(NOT_PER_IMAGE & (overrides.keys() | parameters.keys()))
        if forbidden:
            raise InputError(
                f"{source.name} sets '{forbidden[0]}', which only a profile may set "
                f"(models and bases come from profiles/{self.name}.yaml)"
            )
        where: Where = {}
        if yaml is not None:
            where = {key: (yaml.name, line) for key, line in key_lines(yaml).items()}
        merged = {**self.raw, **parameters, **overrides}
        try:
            settings = task_settings(merged, source.name, where=where, reported=overrides.keys())
        except KeyProblems as exc:
            raise InputError(exc.problems[0]) from exc
        if "controlnet" in overrides or "controlnet" in parameters:
            own_models = {unit.model.strip() for unit in self.settings.controlnet}
            problem = unit_from_input_problem(settings.controlnet, own_models)
            if problem is not None:
                raise InputError(f"{located('controlnet', source, where)}: {problem}")
        if settings.interrogating != self.settings.interrogating:
            raise InputError(
                f"{source.name} turns this {self.settings.task} profile into another kind of "
                f"work (task: {settings.task}, interrogator: {settings.interrogating or 'none'});"
                " only a profile may, since its model is of that kind"
            )
        return settings


def profile_names(folder: Path) -> list[str]:
    """Names of the usable profiles (bases starting with ``_`` are not inbox folders)."""
    if not folder.is_dir():
        return []
    return sorted(
        path.stem for path in folder.glob("*.yaml") if not path.name.startswith(("_", "."))
    )


def load_profile(folder: Path, name: str) -> LoadedProfile:
    """The profile `name`; a key its task does not use is reported when the profile's own
    file sets it, never when a base it extends does (bases serve profiles of every task)."""
    raw, files, own = _merged_raw(folder, name)
    try:
        settings = task_settings(raw, files[0], where=_where(files), reported=own)
    except KeyProblems as exc:
        raise ConfigError(exc.problems[0], exc.problems) from exc
    return LoadedProfile(name=name, settings=settings, raw=raw, files=files)


def _where(files: tuple[Path, ...]) -> Where:
    """Which file of an ``extends`` chain (the profile first) sets each key, and on which line."""
    where: dict[str, tuple[Path | str, int]] = {}
    for path in files:
        for key, line in key_lines(path).items():
            where.setdefault(key, (path, line))
    return where


def _merged_raw(folder: Path, name: str) -> tuple[dict[str, Any], tuple[Path, ...], frozenset[str]]:
    """The keys of the ``extends`` chain merged (the profile's own win), the chain's files,
    and the keys the profile's own file sets."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    current: str | None = name
    while current is not None:
        if "/" in current or "\\" in current or current.startswith("."):
            where = f"{shown(chain[-1][0])}: extends" if chain else shown(folder / f"{name}.yaml")
            raise ConfigError(f"{where}: '{current}' must be a profile name (no / \\ or leading .)")
        path = folder / f"{current}.yaml"
        if any(seen == path for seen, _ in chain):
            raise ConfigError(f"{shown(path)}: extends: '{current}' makes a loop")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise ConfigError(f"{shown(path)}: extends: more than {MAX_EXTENDS_DEPTH} levels")
        if not path.is_file():
            where = f"{shown(chain[-1][0])}: extends: " if chain else ""
            raise ConfigError(f"{where}profile {shown(path)} does not exist")
        try:
            data = read_mapping(path)
        except YamlProblem as exc:
            raise ConfigError(exc.at(path)) from exc
        parent = data.pop("extends", None)
        if parent is not None and not isinstance(parent, str):
            raise ConfigError(f"{shown(path)}: extends: must be a profile name (got {parent!r})")
        chain.append((path, data))
        current = parent
    merged: dict[str, Any] = {}
    for _, data in reversed(chain):
        merged.update(data)
    return merged, tuple(path for path, _ in chain), frozenset(chain[0][1])


class ProfileStore:
    """Profiles by name, re-read when any file of their ``extends`` chain changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[tuple[Path, int, int], ...], LoadedProfile]] = {}

    def get(self, name: str) -> LoadedProfile:
        with self._lock:
            cached = self._cache.get(name)
            if cached and cached[0] == _stamp(cached[1].files):
                return cached[1]
            profile = load_profile(self.folder, name)
            self._cache[name] = (_stamp(profile.files), profile)
            return profile

    def exists(self, name: str) -> bool:
        return (self.folder / f"{name}.yaml").is_file()


def _stamp(files: tuple[Path, ...]) -> tuple[tuple[Path, int, int], ...]:
    stamps = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            return ()
        stamps.append((path, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def check_all(folder: Path) -> tuple[dict[str, LoadedProfile], list[str]]:
    """Load every profile; return the good ones and every problem found."""
    loaded: dict[str, LoadedProfile] = {}
    problems: list[str] = []
    if not folder.is_dir():
        return loaded, [f"profiles folder {shown(folder)} does not exist"]
    for name in profile_names(folder):
        try:
            loaded[name] = load_profile(folder, name)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if not loaded and not problems:
        problems.append(f"profiles folder {shown(folder)} holds no profile (<name>.yaml)")
    # A base's problem shows in every profile that extends it, pointing at the base: once.
    return loaded, list(dict.fromkeys(problems))
