"""A video dropped into a profile inbox: split into frames, each repainted, joined again.

``inbox/<profile>/clip.mp4`` → ``outbox/<profile>/clip.mp4`` with the same frame rate, the
same number of frames and the original audio, plus ``clip.txt`` with the parameters. The
frames are painted like a clip's (one seed, colours matched to the first frame; see
:mod:`daemon.sequences`) and written one by one as PNG files into a work folder:
``outbox/<profile>/clip/`` with ``keep_frames: true``, else ``state/videos/<id>/``. A frame
already there is never painted again, so a daemon killed mid-video resumes at the first frame
without a result. Only the final video and its ``.txt`` are the job's output group (journaled
before they are written); the work folder goes once the video is complete.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger
from PIL import Image

from daemon.color import Colors, color_reference
from daemon.engines.diffusion import Canvas, Painting
from daemon.errors import InputError, TransientError
from daemon.imaging import load_mask
from daemon.infotext import format_infotext
from daemon.jobs import Job
from daemon.outputs import all_or_nothing, claim_names, inside, write_image, write_text
from daemon.profiles import Profile
from daemon.sequences import frame_seed, progress_line

if TYPE_CHECKING:
    from daemon.processing import JobResult, JobRunner
    from daemon.video import VideoInfo

PROGRESS_SECONDS = 10.0  # a progress line at most this often (and for the first frames)
_MARK = ".video"  # in a frames folder: which video, painted with which settings


def run_video(
    runner: JobRunner,
    job: Job,
    settings: Profile,
    notes: list[str],
    *,
    on_planned: Callable[[list[Path]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    """Paint every frame of the video `job.image` and join them; resumable at any frame.

    `should_stop` is asked between frames (the daemon stopping, the processing hours ending):
    then the job is deferred, and it resumes at that frame when it runs again."""
    from daemon.processing import JobResult, infotext_params
    from daemon.video import write_video

    if settings.task in ("interrogate", "sketch", "inpaint_sketch"):
        raise InputError(f"{job.image.name} is a video; a {settings.task} profile takes images")
    info = _probe(job.image)
    cap = runner.settings.max_image_pixels
    if info.width * info.height > cap:
        raise InputError(
            f"{job.image.name}: its frames are {info.width}x{info.height}, over the "
            f"{cap:,} pixel limit (max_image_pixels)"
        )
    mask = _shared_mask(runner, job, settings, (info.width, info.height), notes)
    folder = inside(runner.settings.outbox, job.profile, job.sub_dir)
    identity = _video_id(job)
    state = runner.videos_root / identity
    try:
        base_seed = runner.sequences.start(state, job.image, settings.seed)
        work = _work_folder(folder, job.image.stem, state, settings, identity)
    except OSError as exc:
        raise TransientError(f"could not prepare the work folder: {exc}") from exc
    source = runner.model_source(settings.model)
    model_hash = runner.models.model_hash(source)

    colors: Colors | None = None  # the colour reference: the first frame's result
    frames: list[Path] = []
    started = time.monotonic()
    last_report = 0.0
    painted = 0
    for index, frame in enumerate(_frames(job.image), start=1):
        if index == 1 and settings.prompt_sources:  # {interrogate}/{tags}: the first frame
            settings = runner.with_prompt_sources(job, frame, settings)
        target = work / f"{job.image.stem}_{index:06d}.png"
        frames.append(target)
        if target.exists():  # painted before a restart
            continue
        if should_stop is not None and should_stop():
            raise TransientError(
                f"stopped at frame {index} of {info.frames}; the video resumes there"
            )
        if colors is None and index > 1 and settings.color_correction is not False:
            colors = color_reference(_open(frames[0]))
        seed = frame_seed(settings.seed_mode, base_seed, index)
        frame_notes: list[str] = []
        canvas = Canvas(frame, mask)
        painting = runner.paint(job, canvas, settings, seed, frame_notes, colors=colors)
        if index == 1:
            notes += frame_notes  # said once, not for every frame
        text = _infotext(settings, painting, seed, source.name, model_hash, infotext_params)
        _write_frame(painting.images[0], target, text)
        painted += 1
        now = time.monotonic()
        if now - last_report >= PROGRESS_SECONDS or index == info.frames:
            last_report = now
            per_frame = (now - started) / painted
            seconds = per_frame * index  # as if every frame so far had been painted now
            logger.info("{}: {}", job.label, progress_line(index, info.frames, seconds))
    if not frames:
        raise InputError(f"{job.image.name} has no frames")
    if painted < len(frames):
        notes.append(f"resumed: {len(frames) - painted} of {len(frames)} frames were done before")

    suffix = job.image.suffix.lower()
    (stem,) = claim_names(folder, [work.name if settings.keep_frames else job.image.stem],
                          (suffix, ".txt"), overwrite=settings.overwrite)  # fmt: skip
    video, sidecar = folder / f"{stem}{suffix}", folder / f"{stem}.txt"
    if on_planned is not None:
        on_planned([video, sidecar])
    folder.mkdir(parents=True, exist_ok=True)
    params_text = _open_text(frames[0])
    try:
        with all_or_nothing([]) as written:
            write_video(
                (_open(path) for path in frames),
                video,
                fps=info.fps,
                audio_from=job.image if info.has_audio else None,
            )
            written.append(video)
            write_text(sidecar, f"{params_text}\nFrames: {len(frames)}, FPS: {float(info.fps):g}\n")
            written.append(sidecar)
    except OSError as exc:
        raise TransientError(f"could not write {video.name}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # frames of different sizes: the work folder was tampered with
        shutil.rmtree(state, ignore_errors=True)
        raise TransientError(f"could not join the frames ({exc}); painting them again") from exc
    shutil.rmtree(state, ignore_errors=True)  # frames too, unless they were kept in the outbox
    (work / _MARK).unlink(missing_ok=True)  # finished: the kept frames are the user's now
    return JobResult([video, sidecar], notes)


def _probe(path: Path) -> VideoInfo:
    from daemon.processing import storage_safe
    from daemon.video import probe

    try:
        return storage_safe(probe, path)
    except OSError as exc:  # EIO, a share gone: not the file's fault
        raise TransientError(f"could not read {path.name}: {exc.strerror or exc}") from exc


def _work_folder(folder: Path, stem: str, state: Path, settings: Profile, identity: str) -> Path:
    """Where the frames go: kept → ``outbox/…/<stem>/`` (or ``<stem>-N/`` when that holds
    another video's frames), else ``state/videos/<id>/frames``. A folder is reused only by
    the same video with the same settings, so a re-dropped or re-profiled video never
    takes stale frames; its mark says whose it is."""
    mark = f"{identity} {hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]}"
    if settings.keep_frames:
        for counter in range(10_000):
            candidate = folder / (stem if counter == 0 else f"{stem}-{counter}")
            if not candidate.exists() or _mark(candidate) == mark:
                break
    else:
        candidate = state / "frames"
        if candidate.exists() and _mark(candidate) != mark:
            shutil.rmtree(candidate)  # the profile changed since: those frames do not fit
    candidate.mkdir(parents=True, exist_ok=True)
    (candidate / _MARK).write_text(mark + "\n")
    return candidate


def _mark(folder: Path) -> str:
    try:
        return (folder / _MARK).read_text().strip()
    except OSError:
        return ""


def _video_id(job: Job) -> str:
    """The work folder's name: the same file in the same place resumes its own frames."""
    st = job.image.stat()
    key = f"{job.profile}/{job.sub_dir}/{job.image.name}/{st.st_size}/{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return re.sub(r"[^\w.-]", "_", f"{job.profile}-{job.image.stem}-{digest}")


def _frames(path: Path) -> Iterator[Image.Image]:
    """The video's frames; the storage failing mid-way is the process's fault, not the file's."""
    from daemon.video import read_frames

    try:
        yield from read_frames(path)
    except OSError as exc:
        raise TransientError(f"could not read {path.name}: {exc.strerror or exc}") from exc


def _shared_mask(
    runner: JobRunner, job: Job, settings: Profile, size: tuple[int, int], notes: list[str]
) -> Image.Image | None:
    """``<stem>.mask.png`` beside a video masks every frame (inpaint profiles need one)."""
    from daemon.processing import storage_safe

    path = job.companions.mask
    if path is None:
        if settings.needs_mask:
            raise InputError(
                f"no mask for {job.image.name}: an inpaint profile needs {job.image.stem}.mask.png "
                "beside the video (it masks every frame)"
            )
        return None
    runner.check_regular_file(path)
    cap = runner.settings.max_image_pixels
    mask, note = storage_safe(load_mask, path, size, max_pixels=cap)
    if note:
        notes.append(f"mask: {note}")
    return mask


def _infotext(
    settings: Profile,
    painting: Painting,
    seed: int,
    model_name: str,
    model_hash: str | None,
    params: Callable[..., dict[str, object]],
) -> str:
    values = params(settings, painting, seed, 0, model_name=model_name, model_hash=model_hash)
    return format_infotext(settings.prompt, settings.negative_prompt, values)


def _write_frame(image: Image.Image, target: Path, infotext: str) -> None:
    try:
        write_image(image, target, output_format="png", infotext=infotext, quality=95)
    except OSError as exc:
        raise TransientError(f"could not write the frame {target}: {exc.strerror or exc}") from exc


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _open_text(path: Path) -> str:
    """The parameters a frame carries (its PNG ``parameters`` chunk)."""
    with Image.open(path) as image:
        return str(image.info.get("parameters", ""))
