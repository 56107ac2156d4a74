"""A1111's file hashes, computed once per file version and remembered in the state folder.

"Model hash", "VAE hash", "Lora hashes" and "TI hashes" read whole files — seconds for a
multi-GB checkpoint — and the same files serve job after job and run after run. An entry is
keyed by its kind and the file's absolute path and holds while size and mtime are unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from daemon.a1111.infotext import lora_hash, sha256_file
from daemon.atomic import write_text

HashKind = Literal["sha256", "lora"]
_COMPUTE: dict[HashKind, Callable[[Path], str]] = {"sha256": sha256_file, "lora": lora_hash}


class HashCache:
    """Hashes by (kind, path, size, mtime); saved to `path` when given, else in memory only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                self._data = {k: v for k, v in loaded.items() if k.split(" ", 1)[0] in _COMPUTE}
            except (OSError, ValueError, AttributeError):
                pass  # missing or damaged: hashes are recomputed

    def sha256(self, file: Path) -> str:
        """The file's full sha256 (A1111: model/VAE hash = first 10, TI hash = first 12)."""
        return self._get("sha256", file)

    def lora(self, file: Path) -> str:
        """A1111's 12-hex "Lora hashes" entry (see :func:`daemon.a1111.infotext.lora_hash`)."""
        return self._get("lora", file)

    def _get(self, kind: HashKind, file: Path) -> str:
        st = file.stat()
        key = f"{kind} {file.resolve()}"
        stamp = [st.st_size, st.st_mtime_ns]
        with self._lock:
            known = self._data.get(key)
            if isinstance(known, dict) and known.get("stamp") == stamp:
                return str(known["hash"])
        value = _COMPUTE[kind](file)  # outside the lock: it can take seconds
        with self._lock:
            self._data[key] = {"stamp": stamp, "hash": value}
            self._save()
        return value

    def _save(self) -> None:
        if self.path is None:
            return
        try:  # a cache: not worth an fsync per hash
            write_text(self.path, json.dumps(self._data, indent=1), durable=False)
        except OSError as exc:  # a cache; never worth failing a job for
            logger.debug("could not save the hash cache: {}", exc)
