"""Command line: ``img2imgd run | once | check | status | interrogate | pull | install-service``."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from loguru import logger
from tqdm import tqdm

from daemon import __version__
from daemon.a1111.imaging import flatten_on_white, load_image
from daemon.a1111.prompt_plan import plan_prompts
from daemon.atomic import write_text
from daemon.config.profiles import (
    KeyProblems,
    LoadedProfile,
    Profile,
    ProfileStore,
    check_all,
    profile_names,
    task_settings,
)
from daemon.config.settings import DEFAULT_CONFIG_NAME, Settings, example_config, load_settings
from daemon.errors import ConfigError, Img2ImgdError
from daemon.intake.jobs import Job
from daemon.libraries import quiet_libraries
from daemon.ops.install import PLATFORMS, daemon_command, install, this_platform
from daemon.ops.privacy import configured_folders, protected_folder_warnings
from daemon.ops.pull import pull_models
from daemon.ops.quick_exit import end_process
from daemon.ops.service import JOURNAL_NAME, Daemon, Observers
from daemon.ops.status import status_report
from daemon.ops.windowless import redirect_missing_streams
from daemon.ops.workspace import set_up_folders
from daemon.paths import escaped_lines, shown
from daemon.render.availability import missing_models
from daemon.render.cache import ModelCache
from daemon.render.device import enable_mps_fallback
from daemon.render.family_checks import (
    edit_problems,
    family_problems,
    family_warnings,
    profile_family,
)
from daemon.render.hub_refs import hub_report
from daemon.tasks import interrogate
from daemon.tasks.keys import DEFAULT_INTERROGATE_MODEL
from daemon.tasks.registry import task_of

if TYPE_CHECKING:
    from loguru import Record

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_CONFIG, EXIT_DEFERRED = 0, 1, 2, 3
LOG_FORMAT = "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}"
# A graceful stop: SIGTERM (systemd, launchd, kill), SIGINT (Ctrl-C; NSSM on Windows sends it
# too) and SIGBREAK (Windows' Ctrl-Break to a console process group). Looked up by name, since
# each platform has only some of them.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGBREAK")


def entry() -> NoReturn:
    """The process's entry point (the ``img2imgd`` command, ``python -m daemon``): ``main``,
    then an exit that skips tearing torch and the rest down, once all is written."""
    redirect_missing_streams(Path.cwd())  # pythonw.exe (the Windows logon task) has none
    end_process(main())


def main(argv: list[str] | None = None) -> int:
    enable_mps_fallback()  # before anything imports torch, which reads it only then
    quiet_libraries()
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging("INFO")
    if args.command is cmd_init:  # writes the config file: there may be none to read yet
        return cmd_init(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            logger.error(problem)
        return EXIT_CONFIG
    _setup_logging(settings.log_level)
    return int(args.command(settings, args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img2imgd",
        description="Watch-folder daemon for Stable Diffusion img2img, sketch and inpaint.",
    )
    parser.add_argument("--version", action="version", version=f"img2imgd {__version__}")
    config_help = "config file (default: ./img2imgd.yaml if present, else built-in defaults)"
    parser.add_argument("--config", type=Path, default=None, help=config_help)
    # The same option after the command (`img2imgd once --config x.yaml`): SUPPRESS keeps a
    # value given before the command when it is not repeated after it.
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    commands = _Commands(parser.add_subparsers(required=True, metavar="COMMAND"), options)
    init = commands.add(
        "init", cmd_init, "write a commented img2imgd.yaml here (or at --config) to edit"
    )
    init.add_argument(
        "--models-dir", type=Path, default=None,
        help="the folder of your models, e.g. stable-diffusion-webui/models (A1111's layout)",
    )  # fmt: skip
    commands.add("run", cmd_run, "watch the inbox and process files until stopped")
    commands.add("once", cmd_once, "process what is in the inbox now, then exit (0 ok, 1 inputs "
                 "failed, 2 configuration error, 3 some inputs left for a later run)")  # fmt: skip
    commands.add("check", cmd_check, "validate the config and every profile")
    commands.add(
        "status", cmd_status, "show the queue, the job in hand, recent results and failures"
    )
    interrogate = commands.add(
        "interrogate", cmd_interrogate,
        "print a prompt for each image (CLIP caption or tags), one line per file",
        description="Interrogate images and print one line per file, in order (an empty "
        "line for a file that failed; the reason goes to stderr). Exit 1 if any failed.",
    )  # fmt: skip
    interrogate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    interrogate.add_argument(
        "--interrogator", choices=("clip", "deepbooru"), default=None,
        help="clip (caption + terms) or deepbooru (tags); default: the profile's, else clip",
    )  # fmt: skip
    interrogate.add_argument(
        "--profile", default=None, help="take the model and options from this profile"
    )
    interrogate.add_argument(
        "--model", default=None,
        help="the interrogation model (folder, hub id, builtin:tiny-interrogator, "
        "builtin:tiny-tagger); overrides the profile's",
    )  # fmt: skip
    pull_ = commands.add(
        "pull", cmd_pull,
        "download hub models into the local Hugging Face cache (default: every hub id the "
        "profiles name)",
        description="Download hub models into the local Hugging Face cache the daemon reads "
        "(HF_HOME, or ~/.cache/huggingface): only the files a pipeline needs. With no id, "
        "every hub id the profiles name. Exit 1 if any download failed.",
    )  # fmt: skip
    pull_.add_argument("refs", nargs="*", metavar="ID", help="a hub id, e.g. org/name")
    pull_.add_argument(
        "--revision", default=None, help="a branch, tag or commit (profiles then name "
        "the model as ID@REVISION)",
    )  # fmt: skip
    service = commands.add(
        "install-service", cmd_install_service,
        "write a service for `img2imgd run` (systemd, launchd or a Windows logon task) and "
        "say how to start it",
    )  # fmt: skip
    service.add_argument("--user", action="store_true", help="a user unit (no root needed)")
    service.add_argument(
        "--platform", choices=PLATFORMS, default=None,
        help="write a systemd unit (linux), a launchd agent (macos) or a logon task (windows); "
        "default: this system's",
    )  # fmt: skip
    service.add_argument(
        "--print", dest="print_only", action="store_true", help="print the unit, write nothing"
    )
    return parser


class _Commands:
    """Sub-commands that all take the global options too, after the command."""

    def __init__(self, actions: Any, options: argparse.ArgumentParser) -> None:
        self.actions = actions
        self.options = options

    def add(
        self, name: str, command: Callable[..., int], help: str, **kwargs: Any
    ) -> argparse.ArgumentParser:
        """The sub-command `name`, run by `command(settings, args)`."""
        parser: argparse.ArgumentParser = self.actions.add_parser(
            name, parents=[self.options], help=help, **kwargs
        )
        parser.set_defaults(command=command)
        return parser


def _setup_logging(level: str, *, through_tqdm: bool = False) -> None:
    """stderr, in LOG_FORMAT. ``diagnose=False``: a traceback shows the code, never the values
    of local variables (loguru's default), which may hold prompts, paths and credentials. The
    patcher is a net under the names escaped where they are said: no message can carry a
    terminal escape sequence or a carriage return (line breaks stay)."""

    def printable(record: Record) -> None:
        record["message"] = escaped_lines(record["message"])

    logger.remove()
    logger.configure(patcher=printable)
    if through_tqdm:
        logger.add(lambda line: tqdm.write(line, end="", file=sys.stderr), level=level,
                   format=LOG_FORMAT, colorize=sys.stderr.isatty(), diagnose=False)  # fmt: skip
    else:
        logger.add(sys.stderr, level=level, format=LOG_FORMAT, diagnose=False)


def _config_problems(settings: Settings) -> list[str]:
    """Problems of img2imgd.yaml itself, which stop start-up: the daemon cannot run as
    configured (profiles are another matter: see _report_profiles)."""
    if settings.executor == "ray" and importlib.util.find_spec("ray") is None:
        where = settings.config_file or "img2imgd.yaml"
        return [
            f"{where}: executor: ray needs Ray, which is not installed: "
            "pip install 'img2imgd[ray]' (or set executor: local)"
        ]
    return []


def _prompt_warnings(loaded: Iterable[LoadedProfile], settings: Settings) -> list[str]:
    """Profile prompts that look like prompt editing but are text to A1111 (and here): said,
    not refused, since A1111 takes them too; and settings the model's family ignores."""
    warnings = []
    for profile in loaded:
        keys = profile.settings
        if task_of(keys).pipeline is None:  # it describes the input: no prompts
            continue
        found = {
            "prompt": plan_prompts(keys.prompt, "", keys.steps).notes,
            "negative_prompt": plan_prompts("", keys.negative_prompt, keys.steps).notes,
        }
        warnings += [f"{profile.where(key)}: {key}: {note}" for key, notes in found.items()
                     for note in notes]  # fmt: skip
        family = profile_family(keys, settings)
        if family is not None:
            warnings += [f"{profile.where(key)}: {key}: {note}"
                         for key, note in family_warnings(keys, family)]  # fmt: skip
    return warnings


def _report_profiles(settings: Settings) -> None:
    """Log every problem of every invalid profile (file, line, problem) and every prompt
    warning. They do not stop the daemon: the service says which profiles' files wait."""
    loaded, problems = check_all(settings.profiles)
    for warning in _prompt_warnings(loaded.values(), settings):
        logger.warning(warning)
    for problem in problems:
        logger.error(problem)


def check_problems(settings: Settings) -> list[str]:
    """Everything ``check`` reports as a problem: the config's, every profile's, and every
    model a valid profile names that is not found (nothing is loaded)."""
    return _problems_of(settings, check_all(settings.profiles))


def _problems_of(
    settings: Settings, checked: tuple[dict[str, LoadedProfile], list[str]]
) -> list[str]:
    loaded, problems = checked
    problems = [*_config_problems(settings), *problems]
    for profile in loaded.values():
        found = missing_models(profile.settings, settings)
        problems += [f"{shown(profile.files[0])}: {problem}" for problem in found]
        family = None if found else profile_family(profile.settings, settings)
        if family is not None and task_of(profile.settings).pipeline is not None:
            findings = [*family_problems(profile.settings, family),
                        *edit_problems(profile.settings, settings)]  # fmt: skip
            problems += [f"{profile.where(key)}: {key}: {problem}" for key, problem in findings]
    return problems


def cmd_check(settings: Settings, _args: argparse.Namespace) -> int:
    checked = check_all(settings.profiles)
    loaded = checked[0]
    hub = hub_report(loaded.values(), settings)
    for line in hub.cached:  # the ones not cached are among the problems below
        logger.info(line)
    for warning in _prompt_warnings(loaded.values(), settings):
        logger.warning(warning)
    folders = configured_folders(settings.resolved(Path.cwd()))
    for warning in protected_folder_warnings(
        folders, platform=sys.platform, home=Path.home(), python=sys.executable
    ):
        logger.warning(warning)
    problems = _problems_of(settings, checked)
    for problem in problems:
        logger.error(problem)
    if problems:
        logger.error(
            "{} problem(s) found. At run time a profile with a problem only holds its own "
            "files; the other profiles are served",
            len(problems),
        )
        return EXIT_CONFIG
    names = profile_names(settings.profiles)
    logger.success("config and {} profile(s) are valid: {}", len(names), ", ".join(names))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    target: Path = args.config or Path.cwd() / DEFAULT_CONFIG_NAME
    text = example_config(args.models_dir.expanduser().resolve() if args.models_dir else None)
    try:
        if target.exists():
            logger.info("{} already exists; left as it is", target)
        else:
            write_text(target, text)
            logger.success("wrote {}", target)
        # Beside the config: its relative folders are taken from there.
        made = set_up_folders(target.parent)
    except OSError as exc:
        logger.error("could not write {}: {}; check that the folder is writable",
                     exc.filename or target, exc)  # fmt: skip
        return EXIT_CONFIG
    for path in made:
        logger.success("made {}", path)
    if args.models_dir is None:
        logger.info(
            "next: set models_dir in it to the folder holding your checkpoints (an A1111 "
            "`models` folder works as it is), then run img2imgd check"
        )
    else:
        logger.info("next: img2imgd check")
    return EXIT_OK


def cmd_status(settings: Settings, _args: argparse.Namespace) -> int:
    sys.stdout.write(status_report(settings.state_dir, JOURNAL_NAME))
    return EXIT_OK


def cmd_install_service(settings: Settings, args: argparse.Namespace) -> int:
    platform = args.platform or this_platform()
    command = daemon_command(args.config, Path.cwd())
    try:
        path, text = install(settings, platform, command=command, cwd=Path.cwd(),
                             user=args.user, print_only=args.print_only)  # fmt: skip
    except PermissionError:
        logger.error("cannot write the system unit: run this with sudo, or use --user")
        return EXIT_CONFIG
    if path is not None:
        logger.success("wrote {}", path)
    sys.stdout.write(text + "\n")
    return EXIT_OK


def cmd_interrogate(settings: Settings, args: argparse.Namespace) -> int:
    try:
        profile = _interrogation_profile(args, ProfileStore(settings.profiles))
    except ConfigError as exc:
        logger.error(str(exc))
        return EXIT_CONFIG
    missing = missing_models(profile, settings)
    for problem in missing:
        logger.error(problem)
    if missing:
        return EXIT_CONFIG
    kind = profile.interrogator
    models = ModelCache(
        models_dir=settings.models_dir,
        state_dir=settings.state_dir,
        device=settings.device,
        allow_pickle=settings.allow_pickle,
        download_models=settings.download_models,
    )
    failed = 0
    for file in args.files:
        try:
            image = flatten_on_white(load_image(file, max_pixels=settings.max_image_pixels))
            ref = profile.interrogation_model(kind)
            line = models.interrogators.interrogate(image, profile, kind, ref).line
        except ConfigError as exc:  # the model: every other file would fail the same way
            logger.error(str(exc))
            return EXIT_CONFIG
        except (Img2ImgdError, OSError) as exc:
            failed += 1
            logger.error("{}: {}", file, exc)
            line = ""
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return EXIT_FAILED_INPUTS if failed else EXIT_OK


def _interrogation_profile(args: argparse.Namespace, profiles: ProfileStore) -> Profile:
    """The options of `img2imgd interrogate`: a profile's, or the defaults; then the flags.
    The model is the profile's own when its task runs that interrogator, else the one it
    names for it (``interrogate_model`` / ``tagger_model``)."""
    if args.profile is not None:
        loaded = profiles.get(args.profile)
        base, settings = loaded.raw, loaded.settings
    else:
        base = {"model": DEFAULT_INTERROGATE_MODEL}
        settings = Profile.model_validate(base)
    kind = args.interrogator or settings.interrogating or "clip"
    model = args.model if args.model is not None else settings.interrogation_model(kind)
    values = {**base, "task": interrogate.TASK.name, "interrogator": kind, "model": model}
    try:  # the keys only the profile's own task uses are left out
        return task_settings(values, "img2imgd interrogate")
    except KeyProblems as exc:
        raise ConfigError(str(exc)) from exc


def cmd_pull(settings: Settings, args: argparse.Namespace) -> int:
    _setup_logging(settings.log_level, through_tqdm=True)  # log lines above the progress bar
    failed = pull_models(settings, args.refs, revision=args.revision)
    _setup_logging(settings.log_level)
    return EXIT_FAILED_INPUTS if failed else EXIT_OK


def _install_signal_handlers(on_first: object) -> None:
    """First stop signal: finish the job in hand, then exit. Second: exit now."""
    state = {"count": 0}

    def handler(signum: int, _frame: FrameType | None) -> None:
        state["count"] += 1
        if state["count"] == 1:
            logger.info(
                "{} received: finishing the job in hand, then exiting (again to stop now)",
                signal.Signals(signum).name,
            )
            on_first.set()  # type: ignore[attr-defined]
        else:
            logger.warning("stopping now; the unfinished job stays in the inbox")
            raise SystemExit(130)

    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, handler)


def _refuse_start(settings: Settings) -> bool:
    """Log the config's own problems; True when they stop start-up."""
    problems = _config_problems(settings)
    for problem in problems:
        logger.error(problem)
    if problems:
        logger.error("fix the config file, then start again")
    return bool(problems)


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    if _refuse_start(settings):
        return EXIT_CONFIG
    _report_profiles(settings)
    daemon = Daemon(settings)
    _install_signal_handlers(daemon.stop_event)
    try:
        daemon.run_forever()
    except ConfigError as exc:  # another daemon owns the folders
        logger.error(str(exc))
        return EXIT_CONFIG
    logger.info("stopped")
    return EXIT_OK


def cmd_once(settings: Settings, _args: argparse.Namespace) -> int:
    if _refuse_start(settings):
        return EXIT_CONFIG
    _report_profiles(settings)
    _setup_logging(settings.log_level, through_tqdm=True)
    bar = tqdm(total=0, unit="image", desc="img2imgd once", file=sys.stderr, disable=None,
               dynamic_ncols=True)  # fmt: skip

    def on_job_queued(_job: Job) -> None:
        bar.total += 1
        bar.refresh()

    observers = Observers(job_queued=on_job_queued, job_end=lambda _job, _status: bar.update(1))
    daemon = Daemon(settings, watch=False, observers=observers)
    _install_signal_handlers(daemon.stop_event)
    try:
        tally = daemon.run_once()
    except ConfigError as exc:
        bar.close()
        _setup_logging(settings.log_level)
        logger.error(str(exc))
        return EXIT_CONFIG
    bar.close()
    _setup_logging(settings.log_level)
    logger.info(
        "{} done, {} failed, {} left in the inbox", tally.done, tally.failed, tally.deferred
    )
    for profile, why in sorted(daemon.admission.left_waiting.items()):
        logger.warning("inbox/{}/: files left waiting: {}", profile, why)
    if tally.failed:
        return EXIT_FAILED_INPUTS
    return EXIT_DEFERRED if tally.deferred else EXIT_OK


if __name__ == "__main__":
    entry()
