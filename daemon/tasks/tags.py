"""``task: tags``: the tagger (DeepDanbooru, or a WD14 ONNX tagger), A1111's Interrogate
DeepBooru: ``1girl, long hair, smile, …`` in ``<stem>.txt``, every tag with its score in
``<stem>.json``. The same work as ``task: interrogate`` with ``interrogator: deepbooru``,
under its own name; ``model`` names the tagger. Images only."""

from __future__ import annotations

from typing import Literal

from daemon.tasks.keys import CaptionKeys, CommonKeys, TaggerKeys
from daemon.tasks.task import Describing


class TagsKeys(CommonKeys, CaptionKeys, TaggerKeys):
    """The keys a tags profile may set."""

    interrogator: Literal["deepbooru"] = "deepbooru"  # may be said; nothing else may be


TASK = Describing("tags", TagsKeys, fixed="deepbooru")
