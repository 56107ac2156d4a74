"""The one table of tasks: a profile's ``task:`` names a row, and the row is the task's module.

As paperless-ngx finds a parser by a document's type, the daemon finds what to do with an
input by its profile's task: every other module asks the task object (its keys, companions,
pipeline, interrogator, canvas and outputs) instead of comparing names. A new task is a
module in this package and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from daemon.tasks import edit, img2img, inpaint, inpaint_sketch, interrogate, sketch, tags
from daemon.tasks.keys import CommonKeys
from daemon.tasks.task import Task

TASKS: Mapping[str, Task] = MappingProxyType(
    {
        task.name: task
        for task in (
            img2img.TASK,
            sketch.TASK,
            inpaint.TASK,
            inpaint_sketch.TASK,
            edit.TASK,
            interrogate.TASK,
            tags.TASK,
        )
    }
)
DEFAULT_TASK = img2img.TASK.name
"""The task of a profile that names none."""


def task_of(settings: CommonKeys) -> Task:
    """The task `settings` were validated for (their ``task`` is always a row here)."""
    return TASKS[settings.task]
