"""img2imgd benchmark: ``executor: ray`` with one render worker, then with two.

Not a test: it prints a plain-text table. A real local Ray cluster on 127.0.0.1 (the loopback
recipe of shared/SCALE-OUT.md): a head with no GPU and GPU nodes of one CPU and one fake GPU
each, so that each worker paints on one core, as one GPU would. The daemon runs as it does
in service (watcher, journal, writer); it is warmed up first (workers started, the model
loaded), then the clock runs from the drop of the frames to the last one archived.

Two plain processes reach 1.96x on a 2-core machine (SCALE-OUT.md): that is the ceiling.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ray_bench.py [--frames 16] [--steps 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests/support

from tests.support.ray_cluster import local_cluster, loopback_environment  # noqa: E402

loopback_environment()  # before anything imports Ray

from loguru import logger  # noqa: E402

from daemon.ops.service import Daemon  # noqa: E402
from tests.support.workspace import Workspace, wait_for  # noqa: E402

IMAGES = ("astronaut.png", "chelsea.png")


def timed_run(root: Path, shared_state: Path, nodes: int, frames: int, steps: int) -> float:
    """Seconds from dropping `frames` images to the last one done, on `nodes` workers."""
    workspace = Workspace(root, shared_state).create()
    workspace.profile("clip", steps=steps, max_pixels=128 * 128, denoising_strength=0.6)
    with local_cluster(gpu_nodes=nodes) as cluster:
        settings = workspace.settings(
            executor="ray", ray_address=cluster.address, max_batch=1, unload_after=0
        )
        daemon = Daemon(settings)
        thread = threading.Thread(target=daemon.run_forever, daemon=True)
        thread.start()
        try:
            wait_for(lambda: daemon.started.is_set(), 60)
            for i in range(nodes * 2):  # warm-up: every worker up, the model loaded
                workspace.drop(IMAGES[0], f"clip/warm{i}.png")
            wait_for(lambda: daemon.tally.done == nodes * 2, 300)
            started = time.perf_counter()
            for i in range(frames):
                workspace.drop(IMAGES[i % 2], f"clip/frame{i:03d}.png")
            wait_for(lambda: daemon.tally.done == nodes * 2 + frames, 900, interval=0.01)
            seconds = time.perf_counter() - started
        finally:
            daemon.stop_event.set()
            thread.join(timeout=120)
    assert daemon.tally.failed == 0, daemon.tally
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="img2imgd-bench-ray-") as folder:
        root = Path(folder)
        one = timed_run(root / "one", root / "state", 1, args.frames, args.steps)
        two = timed_run(root / "two", root / "state", 2, args.frames, args.steps)
    print(f"\n{args.frames} frames, 128x128, {args.steps} steps, tiny-sd; each worker on one core\n")
    print(f"{'workers':<28}{'seconds':>9}{'per frame':>11}{'speed-up':>10}")
    print(f"{'1 (one node)':<28}{one:>9.2f}{one / args.frames:>10.2f}s{1.0:>9.2f}x")
    print(f"{'2 (two nodes)':<28}{two:>9.2f}{two / args.frames:>10.2f}s{one / two:>9.2f}x")
    print("\ntarget: >= 1.7x; two plain processes reach 1.96x on this machine (SCALE-OUT.md)")


if __name__ == "__main__":
    main()
