"""Run one job: read and check its inputs, paint, write the results with their parameters.

Everything that can be wrong with the file raises InputError (the job fails and is archived
with a report); everything that is the process's fault raises TransientError (the input
stays and is retried). Moving the inputs afterwards is the lifecycle's job, not this one's.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger
from PIL import Image

from daemon import __version__
from daemon.color import Colors, apply_color_correction, color_reference
from daemon.config import Settings
from daemon.engines.diffusion import Canvas, DiffusionEngine, Painting, draw_seed
from daemon.errors import ConfigError, InputError, TransientError, UnreadableInput
from daemon.imaging import (
    ResizeMode,
    aspect_mismatch,
    fit_size,
    flatten_on_white,
    load_image,
    load_mask,
    scaled_size,
)
from daemon.infotext import format_infotext, png_info
from daemon.interrogation import Interrogation
from daemon.jobs import Job
from daemon.masks import composite_sketch, sketch_mask
from daemon.models import ModelCache, ModelSource
from daemon.outputs import (
    all_or_nothing,
    claim_names,
    copy_file,
    inside,
    output_stems,
    write_image,
    write_text,
)
from daemon.pairing import is_video, pending_images
from daemon.pnginfo import model_note, settings_from_infotext
from daemon.profiles import PROMPT_SOURCES, Interrogator, LoadedProfile, Profile, ProfileStore
from daemon.samplers import infotext_fields
from daemon.sequences import SequenceStore, frame_number, frame_seed, progress_line
from daemon.yamlsafe import YamlProblem, read_mapping

_T = TypeVar("_T")
ASPECT_TOLERANCE = 0.03  # fixed sizes further than this from the input's ratio are logged
PER_IMAGE_YAML_BYTES = 64 * 1024
MASK_MODES = {False: "Inpaint masked", True: "Inpaint not masked"}
# Read errors that say the storage failed, not the file: a dropped share, a dying disk.
STORAGE_ERRNOS = frozenset({errno.EIO, errno.ENOENT, errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN})


@dataclass(frozen=True)
class JobResult:
    outputs: list[Path]
    notes: list[str]
    progress: str | None = None  # a clip's progress bar, for the log line


@dataclass(frozen=True)
class FramePlan:
    """How one frame of a clip (an image in a sub-folder) is painted."""

    state: Path  # the clip's state folder (see sequences.py)
    seed: int
    colors: Colors | None  # the colour reference, None until the first frame is done
    correct_colors: bool


def processing_size(settings: Profile, width: int, height: int) -> tuple[int, int]:
    """The size the model works at: fixed, scaled (A1111 "Resize by") or auto.

    Auto (width/height left out) keeps the input's aspect ratio at ``max_pixels``; one side
    given derives the other from the input's ratio; all sides are multiples of 8.
    """
    if settings.scale is not None:
        return scaled_size(width, height, settings.scale)
    if settings.width and settings.height:
        return settings.width, settings.height
    if settings.width:
        return settings.width, max(8, round(settings.width * height / width / 8) * 8)
    if settings.height:
        return max(8, round(settings.height * width / height / 8) * 8), settings.height
    return fit_size(width, height, max_pixels=settings.max_pixels)


def aspect_note(settings: Profile, source: tuple[int, int], size: tuple[int, int]) -> str | None:
    """Say so when a fixed size distorts or crops the input noticeably."""
    if not (settings.width and settings.height):
        return None
    mismatch = aspect_mismatch(source, size)
    if mismatch <= ASPECT_TOLERANCE:
        return None
    return (
        f"input is {source[0]}x{source[1]} but the profile asks for {size[0]}x{size[1]} "
        f"({mismatch:.0%} off in aspect ratio); '{settings.resize_mode.value}' applies"
    )


def infotext_params(
    settings: Profile,
    painting: Painting,
    seed: int,
    index: int,
    *,
    model_name: str,
    model_hash: str | None,
    vae: tuple[str, str | None] | None = None,
) -> dict[str, object]:
    """A1111's parameter line for one image, in its key names; enough to reproduce it."""
    params: dict[str, object] = {"Steps": settings.steps}
    params.update(infotext_fields(settings.sampler))
    params.update({
        "CFG scale": settings.cfg_scale,
        "Seed": seed,
        "Size": f"{painting.width}x{painting.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae[1] if vae else None,
        "VAE": vae[0] if vae else None,
        "Denoising strength": settings.denoising_strength,
        "Clip skip": settings.clip_skip,
    })  # fmt: skip
    params.update(painting.params)  # Lora hashes, TI hashes
    if painting.inpainted:
        params.update({
            "Mask blur": settings.mask_blur,
            "Mask mode": MASK_MODES[settings.inpainting_mask_invert],
            "Inpaint area": "Only masked" if settings.inpaint_full_res else "Whole picture",
            "Masked area padding": settings.inpaint_full_res_padding,
            "Masked content": settings.inpainting_fill,
        })  # fmt: skip
    if settings.batch_size > 1:
        params.update({"Batch size": settings.batch_size, "Batch pos": index % settings.batch_size})
    if settings.resize_mode is not ResizeMode.JUST_RESIZE:
        params["Resize mode"] = settings.resize_mode.value.capitalize()
    if settings.img2img_fix_steps:
        params["Img2img fix steps"] = True
    params["Version"] = f"img2imgd v{__version__}"
    return params


class JobRunner:
    """Turns a Job into files in the outbox. Used by the single worker thread."""

    def __init__(self, settings: Settings, profiles: ProfileStore, models: ModelCache) -> None:
        self.settings = settings
        self.profiles = profiles
        self.models = models
        self.engine = DiffusionEngine(models)
        self.sequences = SequenceStore(settings.state_dir / "sequences")
        self.videos_root = settings.state_dir / "videos"  # work folders of videos in hand

    def run(
        self,
        job: Job,
        *,
        on_planned: Callable[[list[Path]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> JobResult:
        """Paint ``job`` and write its outputs.

        ``on_planned`` is called with every output path just before the first is written,
        so the journal can roll back a half-written group after a crash.
        """
        notes: list[str] = []
        self.check_regular_file(job.image)
        profile = self.profiles.get(job.profile)  # ConfigError: the profile's fault, not the file's
        if is_video(job.image):
            from daemon.video_jobs import run_video

            settings = self._settings(job, profile, None, notes)
            return run_video(
                self, job, settings, notes, on_planned=on_planned, should_stop=should_stop
            )
        image = storage_safe(load_image, job.image, max_pixels=self.settings.max_image_pixels)
        settings = self._settings(job, profile, image, notes)
        flat = flatten_on_white(image)
        if settings.task == "interrogate":
            kind = settings.interrogator
            found = self._interrogate(flat, settings, kind, settings.interrogation_model(kind))
            return JobResult(self._write_interrogation(job, settings, found, on_planned), notes)
        settings = self.with_prompt_sources(job, flat, settings)
        canvas = self._canvas(job, settings, flat, notes)
        frame = self._frame_plan(job, settings)
        if frame is not None:
            seed, colors = frame.seed, frame.colors
        else:  # a single image: A1111's colour correction matches it to its own input
            seed = draw_seed(settings.seed)
            colors = color_reference(flat) if settings.color_correction else None
        started = time.monotonic()
        painting = self.paint(job, canvas, settings, seed, notes, colors=colors)
        source = self.model_source(settings.model)
        outputs = self._write(job, settings, painting, source, on_planned)
        progress = None
        if frame is not None:
            progress = self._frame_done(job, frame, painting, time.monotonic() - started)
        return JobResult(outputs, notes, progress)

    def paint(
        self,
        job: Job,
        canvas: Canvas,
        settings: Profile,
        seed: int,
        notes: list[str],
        *,
        colors: Colors | None = None,
    ) -> Painting:
        """Paint a canvas at the profile's size; out of GPU memory → once more in low memory.

        `colors`: colour-correct the results towards these (see color.color_reference)."""
        width, height = processing_size(settings, canvas.image.width, canvas.image.height)
        note = aspect_note(settings, canvas.image.size, (width, height))
        if note:
            notes.append(note)
        correct = None
        if colors is not None:
            target = colors

            def correct(image: Image.Image) -> Image.Image:
                return apply_color_correction(target, image)

        def paint() -> Painting:
            return self.engine.paint(
                canvas, settings, width=width, height=height, seed=seed,
                prompt=settings.prompt, negative_prompt=settings.negative_prompt, correct=correct,
            )  # fmt: skip

        try:
            painting = paint()
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise _classify_runtime_error(exc) from exc
            _empty_cuda_cache()
            logger.warning(
                "{}: the GPU ran out of memory; retrying once with attention slicing and VAE "
                "tiling (slower, much less memory), kept on for this model",
                job.label,
            )
            self.models.use_low_memory(settings.model, vae=settings.vae)
            self.models.interrogators.unload_all()
            try:
                painting = paint()
            except Exception as again:
                raise _classify_runtime_error(again) from again
        notes += painting.notes
        return painting

    def _frame_plan(self, job: Job, settings: Profile) -> FramePlan | None:
        """Frames of a clip (images in a sub-folder) share a seed and a colour reference."""
        if not job.sub_dir.parts:
            return None
        state = self.sequences.folder(job.profile, job.sub_dir)
        try:
            base = self.sequences.start(state, job.image.parent, settings.seed)
        except OSError as exc:
            raise TransientError(f"could not keep the clip's state in {state}: {exc}") from exc
        seed = frame_seed(settings.seed_mode, base, frame_number(job.image.name) or 0)
        correct_colors = settings.color_correction is not False
        colors = self.sequences.reference_colors(state) if correct_colors else None
        return FramePlan(state, seed, colors, correct_colors)

    def _frame_done(
        self, job: Job, frame: FramePlan, painting: Painting, seconds: float
    ) -> str | None:
        """Keep the colour reference and count the frame. The outputs are written by now, so
        a failure here is only logged: failing the job would paint the frame again."""
        try:
            if frame.correct_colors and frame.colors is None:
                self.sequences.keep_reference(frame.state, painting.images[0])
            state = self.sequences.frame_done(frame.state, seconds)
        except OSError as exc:
            logger.warning("{}: could not update the clip's state: {}", job.label, exc)
            return None
        remaining = sum(1 for _ in pending_images(job.image.parent, exclude=job.image))
        return progress_line(state.done, state.done + remaining, state.seconds)

    def check_regular_file(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError as exc:
            raise TransientError(f"{path.name} vanished before it could be read") from exc
        if stat.S_ISLNK(st.st_mode):
            raise InputError(
                f"{path.name} is a symbolic link; links are never followed, copy the file itself"
            )
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path.name} is not a regular file")
        if st.st_nlink > 1:
            raise InputError(
                f"{path.name} is a hard link to another file; copy the file into the inbox instead"
            )
        if st.st_size > self.settings.max_input_bytes:
            limit = self.settings.max_input_bytes / 2**20
            raise InputError(
                f"{path.name} is {st.st_size / 2**20:.0f} MiB, over the {limit:.0f} MiB limit "
                "(max_input_bytes in img2imgd.yaml)"
            )
        if st.st_size == 0:
            raise UnreadableInput(f"{path.name} is empty (0 bytes)")

    def _settings(
        self, job: Job, profile: LoadedProfile, image: Image.Image | None, notes: list[str]
    ) -> Profile:
        """The profile, then the input's own parameters (use_png_info), then its YAML."""
        overrides: dict[str, Any] = {}
        sources = []
        if profile.settings.use_png_info and image is not None:
            text, where = self._parameters_text(job, image)
            if text is not None:
                found = settings_from_infotext(text)
                overrides.update(found.overrides)
                notes += [f"{where}: {note}" for note in found.notes]
                sources.append(where)
                notes += self._model_notes(profile.settings, found.model_hash)
        yaml_path = job.companions.settings
        if yaml_path is not None:
            self.check_regular_file(yaml_path)
            try:
                overrides.update(read_mapping(yaml_path, max_bytes=PER_IMAGE_YAML_BYTES))
            except YamlProblem as exc:
                raise InputError(f"{yaml_path.name}: {exc}") from exc
            sources.append(yaml_path.name)
        if not overrides:
            return profile.settings
        return profile.with_overrides(overrides, Path(" + ".join(sources)))

    def _model_notes(self, settings: Profile, model_hash: str | None) -> list[str]:
        """Say so when the parameters were made with another model than the profile's."""
        if settings.task == "interrogate":  # `model` is the interrogator: no hash to compare
            return []
        source = self.model_source(settings.model)
        mismatch = model_note(model_hash, self.models.model_hash(source), source.name)
        return [mismatch] if mismatch else []

    def _parameters_text(self, job: Job, image: Image.Image) -> tuple[str | None, str]:
        """A ``<stem>.txt`` beside the input wins over the image's own parameters."""
        path = job.companions.parameters
        if path is not None:
            self.check_regular_file(path)
            try:
                data = path.read_bytes()[: PER_IMAGE_YAML_BYTES + 1]
            except OSError as exc:
                raise TransientError(f"could not read {path.name}: {exc.strerror}") from exc
            if len(data) > PER_IMAGE_YAML_BYTES:
                raise InputError(f"{path.name} is larger than {PER_IMAGE_YAML_BYTES // 1024} KiB")
            return data.decode("utf-8", errors="replace"), path.name
        return png_info(image), job.image.name

    def _canvas(self, job: Job, settings: Profile, image: Image.Image, notes: list[str]) -> Canvas:
        cap = self.settings.max_image_pixels
        mask: Image.Image | None = None
        companions = job.companions
        if companions.sketch is not None:
            self.check_regular_file(companions.sketch)
            sketch = storage_safe(load_image, companions.sketch, max_pixels=cap).convert("RGBA")
            sketched, note = composite_sketch(image, sketch)
            if note:
                notes.append(f"sketch: {note}")
            if settings.task == "inpaint_sketch" and companions.mask is None:
                from daemon.masks import blend_sketch_for_inpaint

                mask = sketch_mask(sketch, image.size)
                image = blend_sketch_for_inpaint(image, sketched, mask, settings.mask_blur)
            else:
                image = sketched
        if companions.mask is not None:
            self.check_regular_file(companions.mask)
            mask, note = storage_safe(load_mask, companions.mask, image.size, max_pixels=cap)
            if note:
                notes.append(f"mask: {note}")
        if settings.needs_mask and mask is None:
            raise InputError(
                f"no mask for {job.image.name}: an inpaint profile needs {job.image.stem}.mask.png "
                "beside it (or masks/" + job.image.stem + ".png)"
            )
        if settings.needs_sketch and companions.sketch is None:
            raise InputError(
                f"no sketch for {job.image.name}: a {settings.task} profile needs "
                f"{job.image.stem}.sketch.png beside it"
            )
        return Canvas(image=image, mask=mask)

    def _vae_info(self, ref: str | None) -> tuple[str, str | None] | None:
        """A1111's "VAE" (file name) and "VAE hash" (10 hex of its sha256)."""
        if ref is None:
            return None
        path = self.models.vae_source(ref)
        digest = self.models.hashes.sha256(path)[:10] if path.is_file() else None
        return path.name, digest

    def model_source(self, ref: str) -> ModelSource:
        try:
            return self.models.source(ref)
        except ConfigError as exc:
            raise TransientError(f"{exc}; the input waits in the inbox") from exc

    def _write(
        self,
        job: Job,
        settings: Profile,
        painting: Painting,
        source: ModelSource,
        on_planned: Callable[[list[Path]], None] | None,
    ) -> list[Path]:
        folder = inside(self.settings.outbox, job.profile, job.sub_dir)
        extension = f".{settings.output_format}"
        stems = claim_names(
            folder,
            output_stems(job.image.stem, len(painting.images)),
            (extension, ".txt"),
            overwrite=settings.overwrite,
        )
        if on_planned is not None:
            on_planned(
                [folder / f"{stem}{suffix}" for stem in stems for suffix in (extension, ".txt")]
            )
        model_hash = self.models.model_hash(source)
        vae = self._vae_info(settings.vae)
        try:
            with all_or_nothing([]) as written:
                for index, (image, seed, stem) in enumerate(
                    zip(painting.images, painting.seeds, stems, strict=True)
                ):
                    params = infotext_params(
                        settings, painting, seed, index, model_name=source.name,
                        model_hash=model_hash, vae=vae,
                    )  # fmt: skip
                    text = format_infotext(settings.prompt, settings.negative_prompt, params)
                    target = folder / f"{stem}{extension}"
                    write_image(image, target, output_format=settings.output_format,
                                infotext=text, quality=settings.output_quality)  # fmt: skip
                    written.append(target)
                    write_text(folder / f"{stem}.txt", text + "\n")
                    written.append(folder / f"{stem}.txt")
        except OSError as exc:
            raise TransientError(f"could not write to {folder}: {exc.strerror or exc}") from exc
        return written

    # -- interrogation -------------------------------------------------------------------------

    def _interrogate(
        self, image: Image.Image, settings: Profile, kind: Interrogator, ref: str
    ) -> Interrogation:
        try:
            return self.models.interrogators.interrogate(image, settings, kind, ref)
        except ConfigError as exc:  # model or label lists missing: the profile's problem
            raise TransientError(f"{exc}; the input waits in the inbox") from exc
        except Exception as exc:
            raise _classify_runtime_error(exc) from exc

    def with_prompt_sources(self, job: Job, image: Image.Image, settings: Profile) -> Profile:
        """{interrogate} and {tags} in the prompts, replaced by what the input shows."""
        if not settings.prompt_sources:
            return settings
        found: dict[str, str] = {}
        for kind in settings.prompt_sources:
            ref = settings.interrogation_model(kind)
            found[kind] = self._interrogate(image, settings, kind, ref).line
            logger.info("{}: {} interrogation: {}", job.label, kind, found[kind])

        if self.models.device[0] != "cpu":
            # As A1111 (interrogate_keep_models_in_memory off): BLIP, CLIP or the tagger
            # would take GPU memory the painting needs. On a CPU they stay warm.
            self.models.interrogators.unload_all()

        def fill(text: str) -> str:
            for mark, kind in PROMPT_SOURCES.items():
                text = text.replace(mark, found.get(kind, mark))
            return text

        update = {
            "prompt": fill(settings.prompt),
            "negative_prompt": fill(settings.negative_prompt),
        }
        return settings.model_copy(update=update)

    def _write_interrogation(
        self,
        job: Job,
        settings: Profile,
        found: Interrogation,
        on_planned: Callable[[list[Path]], None] | None,
    ) -> list[Path]:
        """``<stem>.txt`` (the prompt, one line, as training tools read captions), ``<stem>.json``
        (the details) and, with copy_image, the input itself beside them."""
        folder = inside(self.settings.outbox, job.profile, job.sub_dir)
        suffixes = [".txt", ".json"] + ([job.image.suffix] if settings.copy_image else [])
        (stem,) = claim_names(folder, [job.image.stem], suffixes, overwrite=settings.overwrite)
        targets = [folder / f"{stem}{suffix}" for suffix in suffixes]
        if on_planned is not None:
            on_planned(targets)
        details = json.dumps(found.as_json(job.image.name), indent=2, ensure_ascii=False)
        try:
            with all_or_nothing([]) as written:
                write_text(targets[0], found.line + "\n")
                written.append(targets[0])
                write_text(targets[1], details + "\n")
                written.append(targets[1])
                if settings.copy_image:
                    copy_file(job.image, targets[2])
                    written.append(targets[2])
        except OSError as exc:
            raise TransientError(f"could not write to {folder}: {exc.strerror or exc}") from exc
        return written


def storage_safe(read: Callable[..., _T], path: Path, *args: Any, **kwargs: Any) -> _T:
    """Call a loader; an I/O failure of the storage is the process's fault, not the file's."""
    try:
        return read(path, *args, **kwargs)
    except InputError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in STORAGE_ERRNOS:
            raise TransientError(f"could not read {path.name}: {cause.strerror}") from exc
        raise


def _classify_runtime_error(exc: Exception) -> Exception:
    """Errors out of the model: out of memory and I/O are the process's fault."""
    if isinstance(exc, (InputError, TransientError, ConfigError)):
        return exc
    if _is_out_of_memory(exc):
        _empty_cuda_cache()
        return TransientError(
            "the GPU ran out of memory even with low-memory settings; lower max_pixels or "
            "batch_size, or free the GPU"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.ENOENT):
        return TransientError(f"I/O error while painting: {exc}")
    return exc


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort on a GPU machine
        logger.debug("could not empty the CUDA cache")
