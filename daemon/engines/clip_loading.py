"""Loading CLIP interrogation's models: BLIP and CLIP, each from a folder or a hub id, with
a sentence that names the model and the likely reason when one fails."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError

if TYPE_CHECKING:
    import torch

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def load_problem(what: str, ref: str | Path, exc: BaseException, local_only: bool) -> str:
    """A plain sentence saying which model failed and the likely reason."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    path = Path(ref).expanduser()
    if path.exists():
        return f"the {what} in {ref} could not be loaded: {first}"
    if not _HUB_ID.match(str(ref)):
        return f"the {what} folder {ref} does not exist"
    if local_only:
        return (
            f"the {what} {ref} is neither a folder nor a model in the local Hugging Face "
            "cache (downloads are off)"
        )
    return f"the {what} {ref} could not be loaded or downloaded: {first}"


def load_pair(
    what: str,
    ref: str | Path,
    model_type: str,
    model_cls: Any,
    processor_cls: Any,
    *,
    device: str,
    dtype: torch.dtype,
    local_files_only: bool,
) -> tuple[Any, Any]:
    """Model and processor from one folder or hub id, on `device`; ConfigError if it fails."""
    from transformers import PretrainedConfig

    source = str(Path(ref).expanduser()) if Path(ref).expanduser().exists() else str(ref)
    try:
        config, _ = PretrainedConfig.get_config_dict(source, local_files_only=local_files_only)
        found = config.get("model_type")
        if found is not None and found != model_type:
            # from_pretrained would only warn and build a model with random weights.
            raise ConfigError(f"the {what} in {ref} is a {found!r} model, not {model_type!r}")
        model = model_cls.from_pretrained(source, dtype=dtype, local_files_only=local_files_only)
        processor = processor_cls.from_pretrained(source, local_files_only=local_files_only)
        model.to(device).eval()
    except ConfigError:
        raise
    except Exception as exc:  # from_pretrained raises many kinds: OSError, ValueError, …
        raise ConfigError(load_problem(what, ref, exc, local_files_only)) from exc
    return model, processor
