"""Profiles added, fixed or removed while the daemon runs.

The main loop looks at the profiles folder every half second (a listing of a few small
files, cheaper than another watcher and just as good on a network share). A new valid
profile gets its inbox folder at once, and its waiting files are looked at again. An invalid
one is logged with every problem, as ``check`` would, and is looked at again each time its
files change, so saving the fix is enough. A removed profile's folder stays, with its files,
until the profile comes back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loguru import logger

from daemon.config.profiles import load_profile, profile_names
from daemon.errors import ConfigError
from daemon.paths import escaped, shown

Stamp = tuple[tuple[str, int, int], ...]


class ProfileRoster:
    def __init__(self, profiles: Path, inbox: Path, *, on_added: Callable[[str], None]) -> None:
        self.profiles = profiles
        self.inbox = inbox
        self.on_added = on_added  # a profile became usable: its waiting files can go
        self._known: set[str] = set()
        self._invalid: dict[str, Stamp] = {}  # name -> the profile files' stamp when checked

    def start(self, names: list[str]) -> None:
        """The profiles the daemon started with (checked, folders made)."""
        self._known = set(names)

    def check(self) -> None:
        if not self.profiles.is_dir():
            return  # gone for now (an unmounted share): not every profile removed
        names = set(profile_names(self.profiles))
        for name in sorted(names - self._known):
            self._consider(name)
        for name in sorted(self._known - names):
            self._known.discard(name)
            logger.warning(
                "profile {} was removed ({}); inbox/{}/ stays, and files there wait until "
                "the profile is back",
                escaped(name), shown(self.profiles / f"{name}.yaml"), escaped(name),
            )  # fmt: skip
        for name in sorted(set(self._invalid) - names):
            del self._invalid[name]

    def _consider(self, name: str) -> None:
        stamp = _stamp(self.profiles)
        if self._invalid.get(name) == stamp:
            return  # nothing changed since it was found invalid
        try:
            profile = load_profile(self.profiles, name)
        except ConfigError as exc:
            self._invalid[name] = stamp
            for problem in exc.problems:
                logger.error(problem)
            logger.error(
                "new profile {} is invalid, so it has no inbox folder yet; fix it "
                "(img2imgd check lists the problems) and it is picked up when saved",
                escaped(name),
            )
            return
        self._invalid.pop(name, None)
        self._known.add(name)
        folder = self.inbox / name
        folder.mkdir(parents=True, exist_ok=True)
        logger.success(
            "new profile {} ({}, task {}): drop files into {}",
            escaped(name), shown(profile.files[0]), profile.settings.task, shown(folder),
        )  # fmt: skip
        self.on_added(name)


def _stamp(folder: Path) -> Stamp:
    """Every profile file's size and time: a fix to a base a profile extends counts too."""
    stamps = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            stat = path.stat()
        except OSError:
            continue
        stamps.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)
