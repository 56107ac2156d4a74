"""The values between prepare, render and deliver are plain: they survive a pickle round trip,
so the same render call can run in another process or on another machine."""

from __future__ import annotations

import pickle
import random

import numpy as np

from daemon.clips.state import ClipStore
from daemon.config.profiles import ProfileStore
from daemon.intake.jobs import Job
from daemon.intake.pairing import companions_on_disk, route
from daemon.journal.journal import Journal
from daemon.live.live import Live
from daemon.prepare.prepare import Preparer
from daemon.render.executor import InProcessExecutor
from daemon.render.values import RenderResult
from tests.conftest import Workspace


def test_requests_and_results_pickle(workspace: Workspace, models) -> None:
    workspace.profile("inpaint", task="inpaint", color_correction=True)
    image = workspace.drop("astronaut.png", "inpaint/a.png")
    workspace.drop("astronaut.mask.png", "inpaint/a.mask.png")
    settings = workspace.settings()
    where = route(settings.inbox, image)
    assert where is not None
    job = Job(where.profile, image, where.sub_dir, companions_on_disk(image))
    profiles = ProfileStore(settings.profiles)
    live = Live(settings.inbox, settings.outbox, profiles, Journal(settings.state_dir / "j.db"))
    preparer = Preparer(
        settings, profiles, ClipStore(settings.state_dir / "seq"), random.Random(1),
        live=live,
    )  # fmt: skip
    request = preparer.prepare(job).request
    again = pickle.loads(pickle.dumps(request))
    assert again.settings == request.settings and again.seed == request.seed
    assert again.image.tobytes() == request.image.tobytes()
    assert again.mask is not None and request.mask is not None
    assert again.mask.tobytes() == request.mask.tobytes()
    assert request.colors is not None and again.colors is not None
    for mine, theirs in zip(
        (*request.colors.values, *request.colors.quantiles),
        (*again.colors.values, *again.colors.quantiles),
        strict=True,
    ):
        assert np.array_equal(mine, theirs)

    (result,) = InProcessExecutor(models).render([again])
    assert isinstance(result, RenderResult)
    back = pickle.loads(pickle.dumps(result))
    assert back.infotexts == result.infotexts and back.seeds == result.seeds
    assert [i.tobytes() for i in back.images] == [i.tobytes() for i in result.images]
