"""Prompt embeddings computed once: the frames of a clip, a folder of images with one prompt.

The text encoder's output depends only on the model (and VAE-less: the text encoders), the
LoRAs active on it with their text-encoder weights, the texts as encoded (embedding names
already replaced by their versioned tokens) and the clip skip. Those make the key, so a hit
is exactly the tensors an encode would give: pixels do not change.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

PROMPT_CACHE_SIZE = 64
"""Prompts kept per loaded model, least recently used dropped first. A 75-token prompt and
its negative take about 0.25 MB on SD 1.x and 0.7 MB on SDXL in fp16, so 64 stay under
50 MB on the GPU even for long SDXL prompts of a few chunks."""


class PromptCache:
    """A bounded least-recently-used map from what makes an embedding to the embedding."""

    def __init__(self, size: int = PROMPT_CACHE_SIZE) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, encode: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The embeddings for `key`, from `encode()` the first time."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found
        value = encode()
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
