"""*deliver* for videos: each painted frame into the work folder, then the frames joined.

Only the final video and its ``.txt`` are the job's output group (journaled before they are
written); the work folder goes once the video is complete, unless its frames are kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from daemon.atomic import write_text
from daemon.deliver.outputs import all_or_nothing, claim_names, write_image
from daemon.deliver.results import Planned
from daemon.errors import TransientError
from daemon.media.video_write import write_video
from daemon.paths import output_folder, portable_name
from daemon.prepare.video import MARK, VideoPlan
from daemon.render.values import RenderResult


def write_frame(target: Path, result: RenderResult) -> None:
    try:
        write_image(result.images[0], target, output_format="png",
                    infotext=result.infotexts[0], quality=95)  # fmt: skip
    except OSError as exc:
        raise TransientError(f"could not write the frame {target}: {exc.strerror or exc}") from exc


def join_video(
    plan: VideoPlan, frames: list[Path], outbox: Path, on_planned: Planned
) -> list[Path]:
    """The video and its ``.txt`` from the painted `frames`; the work state goes after."""
    job, settings = plan.job, plan.settings
    folder = output_folder(outbox, job.profile, job.sub_dir)
    suffix = job.image.suffix.lower()
    name = plan.work.name if settings.keep_frames else portable_name(job.image.stem)
    (stem,) = claim_names(folder, [name],
                          (suffix, ".txt"), overwrite=settings.overwrite)  # fmt: skip
    video, sidecar = folder / f"{stem}{suffix}", folder / f"{stem}.txt"
    on_planned([video, sidecar])
    folder.mkdir(parents=True, exist_ok=True)
    params_text = _parameters(frames[0])
    try:
        with all_or_nothing([]) as written:
            write_video(
                (_open(path) for path in frames),
                video,
                fps=plan.info.fps,
                audio_from=job.image if plan.info.has_audio else None,
            )
            written.append(video)
            fps = float(plan.info.fps)
            write_text(sidecar, f"{params_text}\nFrames: {len(frames)}, FPS: {fps:g}\n")
            written.append(sidecar)
    except OSError as exc:
        raise TransientError(f"could not write {video.name}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # frames of different sizes: the work folder was tampered with
        shutil.rmtree(plan.state, ignore_errors=True)
        raise TransientError(f"could not join the frames ({exc}); painting them again") from exc
    shutil.rmtree(plan.state, ignore_errors=True)  # frames too, unless kept in the outbox
    (plan.work / MARK).unlink(missing_ok=True)  # finished: the kept frames are the user's now
    return written


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _parameters(path: Path) -> str:
    """The parameters a frame carries (its PNG ``parameters`` chunk)."""
    with Image.open(path) as image:
        return str(image.info.get("parameters", ""))
