"""A daemon's folders in a temporary root, for the tests and the benchmarks alike.

One :class:`Workspace` serves a daemon run in-process (:meth:`Workspace.settings`) and one run
as a subprocess (:meth:`Workspace.config_file`): the same folders, the same profile files, the
same way of dropping a file in. Its defaults are the tests' fast ones; a benchmark passes its
own (``profile_base``, ``settings_base``) so that it measures what it always measured.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from daemon.config.settings import Settings
from daemon.tasks.registry import DEFAULT_TASK, TASKS

DATA = Path(__file__).resolve().parent.parent / "data"
"""The sample images and clips in ``tests/data``."""

# Small and fast: 64x64 at 4 steps keeps a job well under a second on a 2-core CPU.
FAST_PROFILE: dict[str, Any] = {
    "model": "builtin:tiny-sd",
    "prompt": "a test",
    "steps": 4,
    "denoising_strength": 0.5,
    "max_pixels": 64 * 64,
    "seed": 1234,
    "sampler_name": "Euler",
}

# Short waits, so that a test does not sit through the production delays (2 s, 30 s, ...).
FAST_SETTINGS: dict[str, Any] = {
    "stability_delay": 0.1,
    "pairing_window": 1.0,
    "retry_delay": 0.3,
    # One frame per pipeline call: every test's pixels stay exactly those recorded before
    # batching existed (a batch differs by float rounding); tests/test_batching.py batches.
    "max_batch": 1,
}


_W = TypeVar("_W", bound="Workspace")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate`` is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s: {predicate}")


def drop(source: Path | str, target: Path) -> Path:
    """Copy a file into place the way most tools do: temp name, then rename; returns ``target``.

    ``source`` is a path, or the name of a sample in ``tests/data``.
    """
    source = DATA / source if isinstance(source, str) else source
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")  # the daemon ignores dot names
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)
    return target


def _used_by(base: Mapping[str, Any], task: Any) -> dict[str, Any]:
    """The keys of `base` that `task` (a profile's ``task`` value) uses; all of them when it
    names no task, so that the profile's own problem is the one reported."""
    name = task if task is not None else base.get("task", DEFAULT_TASK)
    found = TASKS.get(name) if isinstance(name, str) else None
    if found is None:
        return dict(base)
    return {key: value for key, value in base.items() if key in found.keys.model_fields}


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _plain(value: Any) -> Any:
    """A settings value as YAML can write it: paths as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@dataclass
class Workspace:
    """``root/inbox``, ``root/outbox``, ``root/profiles`` and the daemon's ``root/state``.

    ``state_dir`` is a state folder shared by many workspaces, where the built-in models are
    generated once; a daemon in a subprocess reaches them through a ``state/builtin`` link
    (:meth:`config_file`). ``profile_base`` is what every profile starts from;
    ``settings_base`` is what every settings object and config file starts from, beside the
    folders and ``device: cpu``.
    """

    root: Path
    state_dir: Path
    profile_base: dict[str, Any] = field(default_factory=lambda: dict(FAST_PROFILE))
    settings_base: dict[str, Any] = field(default_factory=lambda: dict(FAST_SETTINGS))

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def state(self) -> Path:
        """The daemon's own state folder (journal and lock: one daemon at a time in it)."""
        return self.root / "state"

    @property
    def config(self) -> Path:
        """Where :meth:`config_file` writes."""
        return self.root / "img2imgd.yaml"

    def create(self: _W) -> _W:
        """Make the inbox, outbox and profiles folders; returns the workspace."""
        for folder in (self.inbox, self.outbox, self.profiles):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def profile(self, name: str, **keys: Any) -> Path:
        """Write profiles/<name>.yaml: ``profile_base`` plus ``keys`` (None removes a key).

        ``profile_base`` serves profiles of every task, as a shared base does: its keys that
        the profile's task does not use are left out (its own file may not set them). Its
        inbox folder is made too. Returns the profile file.
        """
        data = _without_none({**_used_by(self.profile_base, keys.get("task")), **keys})
        self.profiles.mkdir(parents=True, exist_ok=True)
        path = self.profiles / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        (self.inbox / name).mkdir(parents=True, exist_ok=True)
        return path

    def _settings_values(self, keys: Mapping[str, Any]) -> dict[str, Any]:
        values = {
            "inbox": self.inbox,
            "outbox": self.outbox,
            "profiles": self.profiles,
            "state_dir": self.state,
            "device": "cpu",
            **self.settings_base,
            **keys,
        }
        return _without_none(values)  # None removes a key: Settings' own default applies

    def settings(self, **keys: Any) -> Settings:
        """Settings for a daemon in this process: the folders, ``settings_base``, ``keys``."""
        return Settings(**self._settings_values(keys))

    def config_file(self, **keys: Any) -> Path:
        """Write img2imgd.yaml for a daemon in a subprocess (the same values as
        :meth:`settings`; a relative folder resolves inside the root). Its state folder gets
        a ``builtin`` link to the shared one, so that the built-in models are made once."""
        values = self._settings_values(keys)
        state = self.root / values.get("state_dir", "state")  # an absolute one stays as it is
        state.mkdir(parents=True, exist_ok=True)
        link = state / "builtin"
        if not link.exists():
            (self.state_dir / "builtin").mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.state_dir / "builtin", target_is_directory=True)
        self.config.write_text(yaml.safe_dump({key: _plain(v) for key, v in values.items()}))
        return self.config

    def drop(self, source: Path | str, relative: str) -> Path:
        """:func:`drop` ``source`` at ``relative`` below the inbox (``<profile>/<name>``)."""
        return drop(source, self.inbox / relative)

    def outputs(self, profile: str) -> list[Path]:
        """Every file the daemon wrote for ``profile`` in the outbox."""
        return _files(self.outbox / profile)

    def done(self, profile: str) -> list[Path]:
        """Every input of ``profile`` archived in ``inbox/_done``."""
        return _files(self.inbox / "_done" / profile)

    def failed(self, profile: str) -> list[Path]:
        """Every input (and error report) of ``profile`` in ``inbox/_failed``."""
        return _files(self.inbox / "_failed" / profile)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
