"""Preparing a video: probe it, find its mask and work folder, and turn frames into requests.

``inbox/<profile>/clip.mp4`` is painted frame by frame as a clip (:mod:`daemon.clips.state`:
one seed, colours matched to its key frame, the first frame's result; with ``ip_adapter:
{reference: key_frame}`` that result is every later frame's reference) into a work folder of
PNG frames: ``outbox/<profile>/clip/`` with ``keep_frames: true``, else
``state/videos/<id>/frames``. A frame already there is never
painted again, so a daemon killed mid-video resumes at the first frame without a result. A
work folder is reused only by the same video with the same settings: its mark says whose it
is, so a re-dropped or re-profiled video never takes stale frames.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from daemon.a1111.color import ColorReference
from daemon.a1111.imaging import load_mask
from daemon.a1111.seeds import frame_seed
from daemon.atomic import write_text
from daemon.clips.state import Clip, ClipStore
from daemon.config.profiles import Profile, ProfileStore
from daemon.config.settings import Settings
from daemon.errors import InputError, TransientError
from daemon.intake.jobs import Job
from daemon.intake.pairing import Kind
from daemon.live.live import in_place
from daemon.media.video import VideoInfo, probe, read_frames
from daemon.paths import output_folder, portable_name
from daemon.prepare.canvas import aspect_note, processing_size
from daemon.prepare.control_video import ControlVideos, control_videos
from daemon.prepare.controls import read_controls
from daemon.prepare.inputs import check_regular_file, merge_settings, storage_safe
from daemon.prepare.reference import read_reference, refers_to_key_frame
from daemon.render.values import RenderRequest
from daemon.tasks.registry import task_of

MARK = ".video"  # in a frames folder: which video, painted with which settings


@dataclass(frozen=True)
class VideoPlan:
    job: Job
    settings: Profile
    info: VideoInfo
    mask: Image.Image | None  # masks every frame
    clip: Clip  # its state in state/videos/<id>: the drawn seed, and the frames unless kept
    work: Path  # where the painted frames go
    base_seed: int
    notes: tuple[str, ...] = ()
    controls: tuple[Image.Image | None, ...] = ()  # <stem>.control[-<n>].png: every frame's
    control_videos: ControlVideos = ()  # <stem>.control[-<n>].mp4: frame i's control is its i
    reference: Image.Image | None = None  # ip_adapter's: every frame's (encoded once)
    refers_to_key_frame: bool = False  # ip_adapter's reference: the first frame as painted

    @property
    def state(self) -> Path:
        return self.clip.folder

    def frame_path(self, index: int) -> Path:
        return _frame_path(self.work, self.job, index)


def _frame_path(work: Path, job: Job, index: int) -> Path:
    return work / f"{portable_name(job.image.stem)}_{index:06d}.png"


def plan_video(
    job: Job,
    settings: Settings,
    profiles: ProfileStore,
    clips: ClipStore,
    rng: random.Random,
) -> VideoPlan:
    check_regular_file(job.image, max_bytes=settings.max_input_bytes)
    merged = merge_settings(
        job, profiles.get(job.profile), None, max_bytes=settings.max_input_bytes
    )
    profile = merged.settings
    task = task_of(profile)
    if not task.takes_video:
        raise InputError(f"{job.image.name} is a video; {task.a_profile} takes images")
    info = _probe(job.image)
    cap = settings.max_image_pixels
    if info.width * info.height > cap:
        raise InputError(
            f"{job.image.name}: its frames are {info.width}x{info.height}, over the "
            f"{cap:,} pixel limit (max_image_pixels)"
        )
    mask, notes = _shared_mask(job, profile, (info.width, info.height), settings)
    controls = read_controls(
        job, profile, max_pixels=settings.max_image_pixels, max_bytes=settings.max_input_bytes
    )
    videos = control_videos(job, profile, info, probe=_probe)
    reference, reference_notes = read_reference(
        job, profile, max_pixels=settings.max_image_pixels, max_bytes=settings.max_input_bytes
    )
    identity = _video_id(job)
    state = settings.state_dir / "videos" / identity
    folder = output_folder(settings.outbox, job.profile, job.sub_dir)
    try:
        # Its key frame (the colour reference) is its first frame, as painted into the work folder.
        work = _work_folder(folder, portable_name(job.image.stem), state, profile, identity)
        clip = clips.open(state, job.image, reference=_frame_path(work, job, 1))
        base_seed = clip.base_seed(profile.seed, rng)
    except OSError as exc:
        raise TransientError(f"could not prepare the work folder: {exc}") from exc
    return VideoPlan(
        job, profile, info, mask, clip, work, base_seed,
        (*merged.notes, *notes, *controls.notes, *reference_notes), controls.images, videos,
        reference, refers_to_key_frame(profile, job),
    )  # fmt: skip


def decoded_frames(plan: VideoPlan) -> Iterator[tuple[int, Image.Image]]:
    """The video's frames, numbered from 1; the storage failing mid-way is the process's fault."""
    try:
        yield from enumerate(read_frames(plan.job.image), start=1)
    except OSError as exc:
        raise TransientError(
            f"could not read {plan.job.image.name}: {exc.strerror or exc}"
        ) from exc


def frame_request(
    plan: VideoPlan,
    index: int,
    frame: Image.Image,
    settings: Profile,
    colors: ColorReference | None,
    rng: random.Random,
    *,
    prompt_image: Image.Image | None = None,
    controls: tuple[Image.Image | None, ...] | None = None,
    key_frame: Image.Image | None = None,
) -> RenderRequest:
    """Frame `index` as a request; `settings` are the plan's with the prompts once filled;
    `controls`: the frame's own control images (its control videos'), else the plan's;
    `key_frame`: the first frame as painted, the IP-Adapter's reference (``key_frame``)."""
    return RenderRequest(
        label=f"{plan.job.label} frame {index}",
        settings=settings,
        image=frame,
        mask=plan.mask,
        size=processing_size(settings, *frame.size),
        seed=frame_seed(settings.seed_mode, plan.base_seed, index, rng),
        colors=colors,
        controls=plan.controls if controls is None else controls,
        reference=plan.reference if key_frame is None else key_frame,
        prompt_image=prompt_image,
        alone=in_place(plan.job),  # a live profile's video: painted frame by frame
    )


def frame_notes(plan: VideoPlan, frame: Image.Image) -> tuple[str, ...]:
    note = aspect_note(plan.settings, frame.size, processing_size(plan.settings, *frame.size))
    return (note,) if note else ()


def _probe(path: Path) -> VideoInfo:
    try:
        return storage_safe(probe, path)
    except OSError as exc:  # EIO, a share gone: not the file's fault
        raise TransientError(f"could not read {path.name}: {exc.strerror or exc}") from exc


def _shared_mask(
    job: Job, profile: Profile, size: tuple[int, int], settings: Settings
) -> tuple[Image.Image | None, tuple[str, ...]]:
    """``<stem>.mask.png`` beside a video masks every frame (inpaint profiles need one)."""
    path = job.companions.mask
    if path is None:
        task = task_of(profile)
        if Kind.MASK in task.companions.required:
            raise InputError(
                f"no mask for {job.image.name}: {task.a_profile} needs {job.image.stem}.mask.png "
                "beside the video (it masks every frame)"
            )
        return None, ()
    check_regular_file(path, max_bytes=settings.max_input_bytes)
    mask, note = storage_safe(load_mask, path, size, max_pixels=settings.max_image_pixels)
    return mask, ((f"mask: {note}",) if note else ())


def _work_folder(folder: Path, stem: str, state: Path, settings: Profile, identity: str) -> Path:
    """Kept → ``outbox/…/<stem>/`` (or ``<stem>-N/`` when that holds another video's frames),
    else ``state/videos/<id>/frames``."""
    mark = f"{identity} {hashlib.sha256(settings.fingerprint()).hexdigest()[:16]}"
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
    write_text(candidate / MARK, mark + "\n")
    return candidate


def _mark(folder: Path) -> str:
    try:
        return (folder / MARK).read_text().strip()
    except OSError:
        return ""


def _video_id(job: Job) -> str:
    """The work folder's name: the same file in the same place resumes its own frames."""
    st = job.image.stat()
    key = f"{job.profile}/{job.sub_dir}/{job.image.name}/{st.st_size}/{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return re.sub(r"[^\w.-]", "_", f"{job.profile}-{job.image.stem}-{digest}")
