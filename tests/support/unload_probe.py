"""Does unloading give the memory back? Resident memory before a model's first load, with it
loaded, and after the daemon's idle unload, in one process, printed as JSON.

The model is loaded through the daemon's own ModelCache and dropped by ``unload_idle``, as
the ``unload_after`` timer drops it. The libraries a load needs are imported before the first
measurement: they stay loaded whatever happens to the model, and are not what is measured.

    python tests/support/unload_probe.py MODELS_DIR STATE_DIR MODEL
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import diffusers.loaders.single_file_utils  # noqa: F401  (imported by a load; see above)
import torch  # noqa: F401
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline  # noqa: F401
from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

from daemon.render.cache import ModelCache


def resident() -> int:
    status = Path("/proc/self/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found[1]) * 1024


def main(models_dir: str, state_dir: str, model: str) -> None:
    cache = ModelCache(models_dir=Path(models_dir), state_dir=Path(state_dir), device="cpu")
    before = resident()
    cache.pipeline(model, "img2img")
    loaded = resident()
    unloaded = cache.unload_idle(0.0)  # idle for 0 s or more: every model goes
    after = resident()
    print(json.dumps({"before": before, "loaded": loaded, "after": after, "unloaded": unloaded}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
