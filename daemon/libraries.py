"""Start-up settings for the libraries the daemon drives, applied once by the command line (and
by each render worker process of ``executor: ray``).

diffusers and transformers print progress bars and advice meant for notebooks; the hub client
(huggingface_hub) logs each of its retries raw and warns of arguments diffusers still passes
it; torchsde warns about float rounding of its Brownian interval (DPM++ SDE); a daemon's log
wants none of it (a failure reaches the daemon as an exception, and it says it once); nor
does it want watchdog's warning when a recursive inotify watch re-registers a folder it
already knows (our own ``_done/`` folders appear inside the watched tree: the watch stays
correct); nor diffusers' "There are modules in ... that should be kept in float32: []", which
``from_pipe`` logs when it makes an inpaint or edit pipeline of a loaded one (an empty list:
nothing is cast). These are set at start-up, not when a module is imported, so that
importing the package changes nothing in the importing process; environment values are
defaults, so a user's own environment still wins.
"""

from __future__ import annotations

import logging
import os
import warnings

_QUIET_ENVIRONMENT = (
    ("TRANSFORMERS_VERBOSITY", "error"),
    ("DIFFUSERS_VERBOSITY", "error"),
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
    ("HF_HUB_VERBOSITY", "error"),  # its retries and fallbacks; failures reach us as errors
)


def quiet_libraries() -> None:
    """Must run before transformers is imported to take full effect."""
    for name, value in _QUIET_ENVIRONMENT:
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", message="Should have ta>=t0", category=UserWarning)
    warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
    logging.getLogger("diffusers.models.modeling_utils").addFilter(_no_empty_float32_advice)


def _no_empty_float32_advice(record: logging.LogRecord) -> bool:
    """False for diffusers' advice about float32 modules when there are none."""
    return "should be kept in float32: []" not in record.getMessage()
