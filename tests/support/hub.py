"""A stand-in for the Hugging Face hub on 127.0.0.1: local folders served as model repos.

It answers what huggingface_hub 2.x asks of a hub when it downloads (read from its source:
``hf_api.model_info``, ``list_repo_tree``, ``file_download.get_hf_file_metadata`` and
``http_get``):

* ``GET /api/models/<repo>[/revision/<rev>]`` — the repo's commit (``sha``) and its files
  (``siblings``: ``rfilename``, with ``size`` and ``blobId``);
* ``GET /api/models/<repo>/tree/<rev>`` — the file list (``type``, ``path``, ``size``, ``oid``);
* ``HEAD``/``GET /<repo>/resolve/<rev>/<path>`` — the file, with the headers the client
  checks: ``ETag`` (the blob's git id), ``X-Repo-Commit`` and ``Content-Length``;
* errors as the hub sends them: 404 with ``X-Error-Code: RepoNotFound``, ``RevisionNotFound``
  or ``EntryNotFound``.

A revision is ``main`` or the repo's commit, a hash of its files. Every request is recorded
(:attr:`StandInHub.requests`), so a test can say which files were fetched and how often; a
``rate`` (bytes per second) makes downloads slow enough to show progress.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


class _Repo:
    def __init__(self, folder: Path) -> None:
        self.files = {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        self.oids = {name: _git_blob_id(data) for name, data in self.files.items()}
        digest = hashlib.sha1()
        for name, oid in self.oids.items():
            digest.update(f"{name} {oid}\n".encode())
        self.sha = digest.hexdigest()


class StandInHub:
    """``with StandInHub({"acme/tiny-sd": folder}) as hub:`` — then ``HF_ENDPOINT=hub.endpoint``."""

    def __init__(self, repos: Mapping[str, Path], *, rate: float | None = None) -> None:
        self.repos = {repo_id: _Repo(folder) for repo_id, folder in repos.items()}
        self.rate = rate
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="stand-in-hub"
        )

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def downloads(self, repo_id: str) -> list[str]:
        """The files of `repo_id` whose content was sent (GET), in order."""
        prefix = f"/{repo_id}/resolve/"
        with self._lock:
            return [
                path[len(prefix) :].split("/", 1)[1]
                for method, path in self.requests
                if method == "GET" and path.startswith(prefix)
            ]

    def __enter__(self) -> StandInHub:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()

    # -- answering -------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # the test output stays the test's

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        return Handler

    def _answer(self, request: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        with self._lock:
            self.requests.append((request.command, path))
        if path.startswith("/api/models/"):
            self._api(request, path.removeprefix("/api/models/"))
        elif "/resolve/" in path:
            self._file(request, path.lstrip("/"), body=body)
        else:
            _error(request, 404, "RepoNotFound")

    def _api(self, request: BaseHTTPRequestHandler, rest: str) -> None:
        parts = rest.split("/")
        repo_id, tail = "/".join(parts[:2]), parts[2:]
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(request, 404, "RepoNotFound")
        revision = tail[1] if len(tail) >= 2 else "main"
        if revision not in ("main", repo.sha):
            return _error(request, 404, "RevisionNotFound")
        if tail[:1] == ["tree"]:
            listing = [
                {"type": "file", "path": name, "size": len(data), "oid": repo.oids[name]}
                for name, data in repo.files.items()
            ]
            return _json(request, listing, repo.sha)
        siblings = [
            {"rfilename": name, "size": len(data), "blobId": repo.oids[name]}
            for name, data in repo.files.items()
        ]
        _json(request, {"id": repo_id, "sha": repo.sha, "siblings": siblings}, repo.sha)

    def _file(self, request: BaseHTTPRequestHandler, rest: str, *, body: bool) -> None:
        before, _, after = rest.partition("/resolve/")
        repo = self.repos.get(before)
        if repo is None:
            return _error(request, 404, "RepoNotFound")
        revision, _, name = after.partition("/")
        if revision not in ("main", repo.sha):
            return _error(request, 404, "RevisionNotFound")
        data = repo.files.get(name)
        if data is None:
            return _error(request, 404, "EntryNotFound", repo.sha)
        request.send_response(200)
        request.send_header("ETag", f'"{repo.oids[name]}"')
        request.send_header("X-Repo-Commit", repo.sha)
        request.send_header("Content-Length", str(len(data)))
        request.send_header("Content-Type", "application/octet-stream")
        request.end_headers()
        if body:
            self._send(request, data)

    def _send(self, request: BaseHTTPRequestHandler, data: bytes) -> None:
        for start in range(0, len(data), CHUNK):
            request.wfile.write(data[start : start + CHUNK])
            if self.rate:
                time.sleep(CHUNK / self.rate)


def _git_blob_id(data: bytes) -> str:
    """A file's id as git (and so the hub) computes it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _json(request: BaseHTTPRequestHandler, value: object, commit: str) -> None:
    payload = json.dumps(value).encode()
    request.send_response(200)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(payload)))
    request.send_header("X-Repo-Commit", commit)
    request.end_headers()
    request.wfile.write(payload)


def _error(request: BaseHTTPRequestHandler, status: int, code: str, commit: str = "") -> None:
    payload = json.dumps({"error": code}).encode()
    request.send_response(status)
    request.send_header("X-Error-Code", code)
    if commit:
        request.send_header("X-Repo-Commit", commit)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(payload)
