"""Prompt embeddings are computed once per model, LoRA state, texts and clip skip."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.engines.prompt_cache import PromptCache
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import Workspace, wait_for


def test_the_cache_is_bounded_and_keeps_the_most_recent() -> None:
    cache = PromptCache(size=2)
    made: list[str] = []

    def encode(name: str) -> dict[str, Any]:
        made.append(name)
        return {"prompt_embeds": name}

    for name in ("a", "b", "a", "c", "a", "b"):
        assert cache.get(name, lambda n=name: encode(n)) == {"prompt_embeds": name}
    assert made == ["a", "b", "c", "b"]  # "b" was the least recently used when "c" came
    assert len(cache) == 2 and (cache.hits, cache.misses) == (2, 4)


@pytest.fixture
def daemon_with_counted_encoder(
    workspace: Workspace, state_dir: Path
) -> Iterator[tuple[Daemon, list[int]]]:
    """The real daemon on a model cache of its own, its text encoder's calls counted."""
    models = ModelCache(models_dir=None, state_dir=state_dir, device="cpu")
    calls: list[int] = []
    pipe = models.pipeline("builtin:tiny-sd", "img2img")
    hook = pipe.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    daemon = Daemon(workspace.settings(), models=models)
    thread = threading.Thread(target=daemon.run_forever, kwargs={"tick": 0.02}, daemon=True)
    thread.start()
    yield daemon, calls
    daemon.stop_event.set()
    thread.join(timeout=60)
    hook.remove()


def test_one_prompt_is_encoded_once_for_many_images(
    workspace: Workspace, daemon_with_counted_encoder: tuple[Daemon, list[int]]
) -> None:
    daemon, calls = daemon_with_counted_encoder
    workspace.profile("img2img", prompt="a red fox", negative_prompt="blurry")
    for index in range(3):
        workspace.drop("chelsea.png", f"img2img/same_{index}.png")
    wait_for(lambda: daemon.tally.done == 3, timeout=60)
    per_prompt = len(calls)  # one encoder call per chunk of the prompt and of the negative
    assert per_prompt == 2

    # Another prompt (per-image YAML) is encoded; the first one is still known.
    (workspace.inbox / "img2img/other.yaml").write_text("prompt: a blue fox\n")
    workspace.drop("chelsea.png", "img2img/other.png")
    workspace.drop("chelsea.png", "img2img/same_again.png")
    wait_for(lambda: daemon.tally.done == 5, timeout=60)
    assert len(calls) == 2 * per_prompt
    cache = daemon.models.prompts("builtin:tiny-sd")
    assert (cache.hits, cache.misses) == (3, 2)
