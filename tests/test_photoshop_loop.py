"""The loop back into Photoshop without a plugin, through the real daemon: Generator (or
Export As) writes a transparent layer into a live inbox; its result replaces itself in the
outbox under the same name, where a Place Linked smart object points.

Photoshop itself is not here: what the link needs of the file is checked instead. The path
must never go missing and never hold half a PNG while it is replaced (a reader in a thread
opens it all along), it keeps its name (never a ``-1`` copy), and it keeps the layer's
transparency (``keep_alpha`` is on for live profiles unless set)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image

from daemon.a1111.imaging import resize_image
from daemon.a1111.sizes import ResizeMode
from tests.conftest import DATA, Workspace, wait_for
from tests.support.workspace import drop


def layer_version(tmp: Path, shade: int) -> Path:
    """A layer as Generator exports it: RGBA, transparent around the subject; each version
    has one edit (a square of `shade`)."""
    with Image.open(DATA / "chelsea.png") as source:
        picture = source.convert("RGB").resize((64, 48))
    picture.paste((shade, 40, 200), (8, 8, 24, 24))
    alpha = Image.new("L", picture.size, 0)
    alpha.paste(255, (4, 4, 60, 44))
    layer = picture.convert("RGBA")
    layer.putalpha(alpha)
    path = tmp / f"v{shade}.png"
    layer.save(path)
    return path


class LinkedReader:
    """What a linked smart object does when its file changes, as often as it can: open the
    path and decode the whole PNG. Every failure once the file first exists is kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="linked-reader", daemon=True)

    def __enter__(self) -> LinkedReader:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        seen = False
        # Paced (a linked file is re-read on change, not in a busy loop), so that the reader
        # does not starve the render of the interpreter; still many reads per replacement.
        while not self._stop.wait(0.002):
            try:
                with Image.open(self.path) as image:
                    image.load()  # a partial PNG fails here
                seen = True
                self.reads += 1
            except FileNotFoundError as exc:
                if seen:
                    self.failures.append(f"missing: {exc}")
            except OSError as exc:
                self.failures.append(f"unreadable: {exc}")


def test_the_live_result_replaces_itself_under_one_name_that_never_goes_missing(
    workspace: Workspace, running, tmp_path: Path
):
    workspace.profile("live", live=True, width=64, height=64, resize_mode="Just Resize")
    daemon = running()
    layer = workspace.inbox / "live" / "layer.png"
    linked = workspace.outbox / "live" / "layer.png"
    with LinkedReader(linked) as reader:
        for count, shade in enumerate((10, 130, 250), start=1):
            version = layer_version(tmp_path, shade)
            drop(version, layer)  # Generator: a temporary file renamed into place
            wait_for(lambda count=count: daemon.tally.done == count, timeout=60)
            wait_for(lambda: reader.reads > 0, timeout=10)
    assert reader.failures == [], "the linked path went missing or was half written"
    assert reader.reads > 3
    names = sorted(path.name for path in workspace.outputs("live"))
    assert names == ["layer.png", "layer.txt"], "replaced in place, never a -1 copy"
    with Image.open(linked) as result, Image.open(version) as last:
        assert result.mode == "RGBA", "keep_alpha is on for a live profile"
        expected = resize_image(last.getchannel("A"), ResizeMode.JUST_RESIZE, 64, 64)
        assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(expected))
