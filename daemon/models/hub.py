"""Hub models for the daemon: found in the local cache, or downloaded on purpose, with progress.

Two ways in, one download:

* :func:`locate` — at run time. A hub id is looked up in the local cache only
  (:mod:`daemon.models.hub_cache`); if it is not there the job's model is missing, said in one
  line that names the id, the cache folder and the ``pull`` command — unless the
  configuration opts in (``download_models: true``), when the first job that needs it
  downloads it once, with progress lines in the log, while other jobs wait.
* :func:`pull` — ``img2imgd pull``, and the opt-in above: the files :func:`select_files`
  picks (one copy of the weights, no other runtimes), into the cache the daemon reads.

Progress is measured on the disk (the bytes in the repo's ``blobs/`` folder, where
huggingface_hub writes each file as it arrives), not through the hub client's progress bars,
so it does not depend on the client's internals and is the same for every transfer method.
A failure is one line (:func:`reason`): the hub client's retries and warnings are silenced
at start-up (:mod:`daemon.libraries`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from daemon.errors import ConfigError
from daemon.models.hub_cache import (
    HubRef,
    HubRole,
    cache_dir,
    cached_folder,
    components_of,
    has_markers,
    literal,
    not_cached,
    select_files,
    wrong_kind,
)

Progress = Callable[[int, int], None]
"""Called about twice a second during a pull with (bytes fetched, bytes to fetch)."""
LOG_EVERY = 5.0  # s between progress lines in a log
POLL_EVERY = 0.5  # s between looks at the bytes on disk
LIST_TIMEOUT = 10.0  # s to wait for the hub's file list (it answers in well under one)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class PullError(Exception):
    """A download that did not happen; the message is one line saying why."""


@dataclass(frozen=True)
class Pulled:
    folder: Path  # the snapshot folder in the cache
    files: int  # files the pipeline needs
    fetched: int  # bytes downloaded now (0: it was all there)
    seconds: float


def locate(ref: str, role: HubRole, *, what: str, download: bool = False) -> Path:
    """The folder of hub model `ref` in the local cache, to be used as `role`; downloaded
    first when `download` (``download_models``) allows it. ConfigError when it cannot be had:
    the caller treats it like any missing model (the input waits in the inbox)."""
    folder = cached_folder(ref)
    if folder is None and download:
        folder = _download_once(ref, what)
    if folder is None:
        raise ConfigError(not_cached(what, ref))
    if not has_markers(folder, role):
        raise ConfigError(wrong_kind(what, ref, role, folder))
    return folder


def _download_once(ref: str, what: str) -> Path:
    """One download per id however many jobs need it: the others wait for it, then find it
    in the cache."""
    with _lock_for(ref):
        folder = cached_folder(ref)
        if folder is not None:
            return folder
        logger.info(
            "{} '{}' is not in the local cache: downloading it (download_models)", what, ref
        )
        try:
            return pull(ref, on_progress=LogProgress(ref)).folder
        except PullError as exc:
            # The job waits (a model missing is not the file's fault); its retry tries again.
            raise ConfigError(f"{what} '{ref}' could not be downloaded: {exc}") from exc


def _lock_for(ref: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(HubRef.parse(ref)), threading.Lock())


def pull(ref: str, *, on_progress: Progress | None = None) -> Pulled:
    """Download the files of `ref` a pipeline needs into the cache (those already there are
    kept). PullError, one line, when it cannot."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.file_download import repo_folder_name

    hub = HubRef.parse(ref)
    try:
        info = HfApi().model_info(
            hub.repo, revision=hub.revision, files_metadata=True, timeout=LIST_TIMEOUT
        )
    except Exception as exc:  # the hub client raises many kinds; each is said in one line
        raise PullError(reason(exc)) from exc
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    files = select_files(sizes, _components(hub, info.sha) if "model_index.json" in sizes else None)
    if not files:
        raise PullError(f"{ref} has no files a pipeline reads (its files: {len(sizes)})")
    storage = cache_dir() / repo_folder_name(repo_id=hub.repo, repo_type="model")
    snapshot = storage / "snapshots" / str(info.sha)
    total = sum(sizes[f] for f in files if not (snapshot / f).is_file())
    logger.info(
        "{}: {} files, {} to download into {}", ref, len(files), size_text(total), cache_dir()
    )
    outcome: dict[str, object] = {}

    def download() -> None:
        try:
            outcome["folder"] = snapshot_download(
                hub.repo, revision=hub.revision, allow_patterns=[literal(f) for f in files]
            )
        except Exception as exc:  # handed to the calling thread, which says it in one line
            outcome["error"] = exc

    started, before = time.monotonic(), _blob_bytes(storage)
    worker = threading.Thread(target=download, name=f"pull {hub.repo}")
    worker.start()
    while worker.is_alive():
        worker.join(POLL_EVERY)
        if on_progress is not None:
            on_progress(min(max(_blob_bytes(storage) - before, 0), total), total)
    error = outcome.get("error")
    if isinstance(error, BaseException):
        raise PullError(reason(error)) from error
    if on_progress is not None:
        on_progress(total, total)
    pulled = Pulled(Path(str(outcome["folder"])), len(files), total, time.monotonic() - started)
    logger.info(
        "{}: {} downloaded in {:.0f} s; it is in {}",
        ref, size_text(total), pulled.seconds, pulled.folder,
    )  # fmt: skip
    return pulled


def _components(hub: HubRef, commit: str | None) -> set[str] | None:
    """A pipeline's component folders, from its ``model_index.json`` (fetched first, as
    diffusers does, so that folders the pipeline does not name are never downloaded)."""
    from huggingface_hub import hf_hub_download

    try:
        index = hf_hub_download(hub.repo, "model_index.json", revision=commit or hub.revision)
    except Exception as exc:  # the hub client raises many kinds; each is said in one line
        raise PullError(reason(exc)) from exc
    return components_of(Path(index))


def _blob_bytes(storage: Path) -> int:
    """Bytes in a repo's ``blobs/``: finished files and the ``.incomplete`` ones growing."""
    try:
        with os.scandir(storage / "blobs") as entries:
            return sum(e.stat(follow_symlinks=False).st_size for e in entries if e.is_file())
    except OSError:  # not made yet, or a file renamed while we looked
        return 0


def reason(exc: BaseException) -> str:
    """Why a download failed, in one line a user can act on."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, which turns downloads off"
    if isinstance(exc, GatedRepoError):
        return f"the repo is gated on {endpoint}: accept its terms there and set HF_TOKEN"
    if isinstance(exc, RevisionNotFoundError):
        return f"no such revision on {endpoint}"
    if isinstance(exc, RepositoryNotFoundError):
        return f"no such repo on {endpoint} (a private one needs HF_TOKEN)"
    first = (str(exc).strip().splitlines() or [""])[0]
    if _is_network_error(exc):
        return f"{endpoint} cannot be reached ({first or type(exc).__name__})"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _is_network_error(exc: BaseException) -> bool:
    """Refused, reset, timed out, no route: told by the class names of the hub client's HTTP
    library (httpx2's TransportError and kin), which the daemon does not import itself."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, ConnectionError | TimeoutError) or bool(
        names & {"TransportError", "TimeoutException", "NetworkError"}
    )


class LogProgress:
    """Progress as log lines, one every :data:`LOG_EVERY` seconds (a log has no bar)."""

    def __init__(self, ref: str, *, every: float = LOG_EVERY) -> None:
        self.ref = ref
        self.every = every
        self._next = time.monotonic() + every

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now < self._next or done >= total:
            return
        self._next = now + self.every
        share = f" ({100 * done / total:.0f}%)" if total else ""
        logger.info(
            "downloading {}: {} of {}{}", self.ref, size_text(done), size_text(total), share
        )


def size_text(count: int) -> str:
    """Bytes for people: 6.5 MB, 4.27 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{count} B"
