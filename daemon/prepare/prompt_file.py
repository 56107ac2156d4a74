"""``<stem>.prompt.txt``: a prompt saved beside its input, in place of the profile's.

An artist writes the prompt (or, for an instruction-edit model, the instruction) next to the
picture it is for. The whole text is the prompt, as written: it is not parsed as an infotext
(``<stem>.txt`` with ``use_png_info`` is for parameters). It wins over the profile, the
input's PNG info and its ``<stem>.yaml``, since it is the most specific thing the user said.
Pure: the bytes are read (and checked as a file) by :mod:`daemon.prepare.inputs`.
"""

from __future__ import annotations

from daemon.errors import InputError
from daemon.tasks.task import Task


def prompt_from_file(name: str, data: bytes, task: Task) -> tuple[str | None, tuple[str, ...]]:
    """The prompt file `name`'s text as `task`'s prompt, and notes for the log; None when
    the task has no prompt (an interrogator): the file is then ignored, and said to be.

    UTF-8 (a BOM dropped), surrounding whitespace stripped; an empty file is the empty
    prompt, as the user wrote it, and said. Anything else is the file's fault."""
    if "prompt" not in task.keys.model_fields:
        return None, (f"{name} ignored: task {task.name} has no prompt",)
    try:
        prompt = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{name} is not UTF-8 text (byte {exc.start} cannot be read): save it as UTF-8 "
            "and drop the input again"
        ) from exc
    return prompt, () if prompt else (f"{name} is empty: painted with an empty prompt",)
