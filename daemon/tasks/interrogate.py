"""``task: interrogate``: A1111's Interrogate CLIP (``interrogator: clip``, the default: a BLIP
caption, then CLIP picks terms from label lists) or Interrogate DeepBooru
(``interrogator: deepbooru``, the same as ``task: tags``). ``model`` names the interrogation
model. Each input gives ``<stem>.txt`` and ``<stem>.json``; images only."""

from __future__ import annotations

from daemon.tasks.keys import CaptionKeys, ClipKeys, CommonKeys, InterrogatorKeys, TaggerKeys
from daemon.tasks.task import Describing


class InterrogateKeys(CommonKeys, CaptionKeys, InterrogatorKeys, ClipKeys, TaggerKeys):
    """The keys an interrogate profile may set: the options of both interrogators, since its
    ``interrogator`` key chooses between them."""


TASK = Describing("interrogate", InterrogateKeys)
