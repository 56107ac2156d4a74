"""Qwen-Image-Edit's processor without torchvision.

The Edit pipelines read the input image through ``Qwen2VLProcessor`` (image + prompt to the
vision-language text encoder). In transformers 5.25 that class cannot be loaded or even
built without torchvision, for its *video* processor: ``from_pretrained`` raises ImportError
(``Qwen2VLVideoProcessor requires the Torchvision library``) even when the folder has no
video settings, and ``__init__`` fails checking a missing video processor. Image editing
never uses video, so ``ImageOnlyProcessor`` is that processor minus the video part,
with the PIL image processor (``Qwen2VLImageProcessorPil``, which transformers itself falls
back to without torchvision). It is passed to the pipeline as ``processor=``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

_IMAGE_TOKEN = "<|image_pad|>"
_VIDEO_TOKEN = "<|video_pad|>"


@cache
def image_only_processor_class() -> type:
    """The class ``ImageOnlyProcessor``: ``Qwen2VLProcessor`` without the video processor
    (which needs torchvision). Made on first call, so that importing this module does not
    import transformers.

    ``ProcessorMixin`` takes its attributes from ``__init__``'s parameters, so this one has
    only ``image_processor`` and ``tokenizer``; ``__init__`` sets what Qwen2VLProcessor's
    would and skips its video check by calling ProcessorMixin's directly.
    """
    from transformers import Qwen2VLProcessor

    class ImageOnlyProcessor(Qwen2VLProcessor):
        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            chat_template: str | None = None,
            **kwargs: Any,
        ) -> None:
            self.image_token, self.video_token = _IMAGE_TOKEN, _VIDEO_TOKEN
            self.image_token_id = tokenizer.convert_tokens_to_ids(_IMAGE_TOKEN)
            self.video_token_id = tokenizer.convert_tokens_to_ids(_VIDEO_TOKEN)
            super(Qwen2VLProcessor, self).__init__(
                image_processor, tokenizer, chat_template=chat_template
            )

    return ImageOnlyProcessor


def image_only_processor(image_processor: Any, tokenizer: Any) -> Any:
    """An ``ImageOnlyProcessor`` of these two parts (see :func:`image_only_processor_class`)."""
    return image_only_processor_class()(image_processor, tokenizer)


def processor_from_folder(folder: str | Path) -> Any:
    """The Edit model's processor, from local files: the hub layout's ``processor/`` folder
    (image-processor settings and tokenizer), else the ``tokenizer/`` folder with Qwen2-VL's
    default image-processor settings (a folder saved without its processor).

    Raises FileNotFoundError when the folder has neither.
    """
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    root = Path(folder)
    processor_dir = root / "processor"
    if (processor_dir / "preprocessor_config.json").is_file():
        return image_only_processor(
            Qwen2VLImageProcessorPil.from_pretrained(processor_dir, local_files_only=True),
            AutoTokenizer.from_pretrained(processor_dir, local_files_only=True),
        )
    tokenizer_dir = root / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(
            f"{root} has neither processor/ nor tokenizer/: it is not a complete "
            "Qwen-Image-Edit folder; download the model again"
        )
    return image_only_processor(
        Qwen2VLImageProcessorPil(),
        AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True),
    )
