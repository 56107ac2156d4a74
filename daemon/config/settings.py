"""Daemon settings: folders, device and timings, from ``img2imgd.yaml``.

Relative paths are relative to the config file's folder (or to the working directory when
there is no config file), so a checkout runs as it is and a service can point anywhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.config.hours import parse_window
from daemon.config.validation import describe
from daemon.config.yamlsafe import YamlProblem, key_lines, read_mapping
from daemon.errors import ConfigError
from daemon.paths import shown
from daemon.tasks.keys import Offload

DEFAULT_CONFIG_NAME = "img2imgd.yaml"
EXAMPLE_CONFIG = Path(__file__).parent.parent / "data" / "img2imgd.example.yaml"
_MODELS_DIR_LINE = re.compile(r"^# models_dir: \S+", re.MULTILINE)


class Settings(BaseModel):
    """Every key of ``img2imgd.yaml``; the defaults are what a checkout runs with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    profiles: Path = Path("profiles")
    models_dir: Path | None = None  # an A1111 install's `models` folder works as it is
    state_dir: Path = Path("state")  # built-in models, hash cache, journal
    lora_dirs: list[Path] | None = None  # default: models_dir/Lora and models_dir/LyCORIS
    embedding_dirs: list[Path] | None = None  # default: models_dir/embeddings, ../embeddings
    allow_pickle: bool = False  # read pickled (.ckpt/.pt/.bin) models, VAEs, LoRAs, embeddings
    # Hub ids not in the local cache: false, the job waits (`img2imgd pull` fetches them);
    # true, the first job that needs one downloads it, with progress in the log.
    download_models: bool = False
    device: Literal["auto", "cpu", "cuda", "mps"] | str = "auto"
    compile_unet: bool = False  # CUDA: torch.compile the UNet (minutes at first, then faster)
    # CUDA: a model's weights all on the GPU (none), moved there part by part (model) or layer
    # by layer (sequential); auto chooses from the model's size and the GPU's free memory
    offload: Offload = "auto"
    # Frames of a video painted in one pipeline call; auto: 8 on a CPU, from free memory on CUDA
    max_batch: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = "auto"
    # Where rendering runs: `local` in this process; `ray` on every GPU of a Ray cluster
    executor: Literal["local", "ray"] = "local"
    ray_address: str = ""  # "": a private Ray on this machine; "auto" or "host:port": join one
    # GPUs per worker: 0.5 puts two workers on a GPU; 0 makes CPU workers (then ray_workers)
    ray_gpus_per_worker: float = Field(1.0, ge=0.0, le=64.0)
    # How many workers: at most this many on GPUs (default: one per GPU); with CPU workers,
    # exactly this many (there are no GPUs to count)
    ray_workers: int | None = Field(None, ge=1, le=1024)
    ray_inflight_per_worker: int = Field(2, ge=1, le=64)  # requests (or batches) sent ahead

    stability_delay: float = Field(2.0, ge=0.0, le=3600.0)  # s of unchanged size+mtime
    pairing_window: float = Field(30.0, ge=0.0, le=86400.0)  # s to wait for a required mask/sketch
    rescan_interval: float = Field(60.0, gt=0.0, le=86400.0)  # s between full inbox rescans
    polling: bool = False  # watchdog's polling observer, for network shares
    poll_interval: float = Field(1.0, gt=0.0, le=600.0)  # s between polls in polling mode
    retry_delay: float = Field(
        30.0, gt=0.0, le=86400.0
    )  # s before a job that hit a process fault runs again

    unload_after: float = Field(900.0, ge=0.0)  # s idle before a model leaves (GPU) memory; 0 never
    processing_hours: str | None = None  # e.g. "22:00-06:00": jobs run only then
    prune_done_after_days: float | None = Field(None, gt=0.0)  # delete from _done after N days

    max_image_pixels: int = Field(64_000_000, gt=0)  # decoded pixels; larger inputs fail
    max_input_bytes: int = Field(512 * 1024 * 1024, gt=0)  # bytes; larger inputs fail
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    # Prometheus metrics at http://metrics_address:metrics_port/metrics; off when unset.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_address: str = "127.0.0.1"  # 0.0.0.0: a Prometheus on another machine may scrape

    # Where these settings came from, for messages that say which file to edit: the config
    # file, or the working folder where an img2imgd.yaml would be read (none was there).
    _config_file: Path | None = PrivateAttr(default=None)
    _folder: Path = PrivateAttr(default_factory=Path.cwd)

    def from_file(self, config_file: Path | None, folder: Path) -> Settings:
        """These settings, remembering the file they were read from (None: no file, only
        the defaults, read in `folder`)."""
        copy = self.model_copy()
        copy._config_file, copy._folder = config_file, folder
        return copy

    @property
    def config_file(self) -> Path | None:
        return self._config_file

    def where_to_set(self, key: str, example: str) -> str:
        """Which file to set `key` in, said so that a newcomer can act on it."""
        if self._config_file is not None:
            return f"set `{key}: {example}` in {shown(self._config_file)}"
        return (
            f"there is no {DEFAULT_CONFIG_NAME} in {self._folder} yet: create one with "
            f"`img2imgd init` (or copy img2imgd.example.yaml there) and set `{key}: {example}` "
            "in it"
        )

    @field_validator("processing_hours")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None:
            parse_window(value)
        return value

    @model_validator(mode="after")
    def _cpu_workers_are_counted(self) -> Settings:
        if self.ray_gpus_per_worker == 0 and self.ray_workers is None:
            raise ValueError(
                "ray_gpus_per_worker: 0 makes CPU workers, and there are no GPUs to count: "
                "say how many with ray_workers: N (e.g. 2)"
            )
        return self

    def resolved(self, base: Path) -> Settings:
        """The same settings with every folder made absolute against ``base``."""

        def absolute(path: Path) -> Path:
            path = path.expanduser()
            return path if path.is_absolute() else (base / path).resolve()

        return self.model_copy(
            update={
                "inbox": absolute(self.inbox),
                "outbox": absolute(self.outbox),
                "profiles": absolute(self.profiles),
                "state_dir": absolute(self.state_dir),
                "models_dir": absolute(self.models_dir) if self.models_dir else None,
                "lora_dirs": [absolute(p) for p in self.lora_dirs] if self.lora_dirs else None,
                "embedding_dirs": (
                    [absolute(p) for p in self.embedding_dirs] if self.embedding_dirs else None
                ),
            }
        )


def load_settings(config_path: Path | None, *, cwd: Path | None = None) -> Settings:
    """Load the config file (or the defaults when there is none) with absolute folders.

    ``config_path`` None means ``img2imgd.yaml`` in the working directory if it exists.
    """
    cwd = cwd or Path.cwd()
    if config_path is None:
        candidate = cwd / DEFAULT_CONFIG_NAME
        if not candidate.is_file():
            return Settings().resolved(cwd).from_file(None, cwd)
        config_path = candidate
    if not config_path.is_file():
        raise ConfigError(f"config file {shown(config_path)} does not exist")
    try:
        raw = read_mapping(config_path)
    except YamlProblem as exc:
        raise ConfigError(exc.at(config_path)) from exc
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        where = {key: (config_path, line) for key, line in key_lines(config_path).items()}
        problems = describe(exc, config_path, known=Settings.model_fields, where=where)
        raise ConfigError(problems[0], problems) from exc
    resolved = settings.resolved(config_path.resolve().parent)
    return check_folders(resolved, config_path).from_file(config_path.resolve(), cwd)


def check_folders(settings: Settings, source: Path | str) -> Settings:
    """Refuse folder layouts that would make the daemon eat its own output."""
    inbox, outbox = settings.inbox, settings.outbox
    if outbox == inbox or inbox in outbox.parents:
        raise ConfigError(
            f"{shown(source)}: outbox: {shown(outbox)} is inside the inbox {shown(inbox)}; the "
            "daemon would process its own results. Put the outbox beside the inbox."
        )
    if outbox in inbox.parents:
        raise ConfigError(
            f"{shown(source)}: inbox: {shown(inbox)} is inside the outbox {shown(outbox)}; keep "
            "them apart"
        )
    return settings


def example_config(models_dir: Path | None = None) -> str:
    """The commented example config (every key, at its default), with `models_dir` set."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    text = text.replace(
        "copy this file to img2imgd.yaml (or pass --config PATH) and edit.",
        "written by `img2imgd init`; edit it, then run `img2imgd check`.",
    )
    if models_dir is None:
        return text
    # JSON quoting is valid YAML and survives any character a path may hold.
    return _MODELS_DIR_LINE.sub(lambda _m: f"models_dir: {json.dumps(str(models_dir))}", text, 1)
