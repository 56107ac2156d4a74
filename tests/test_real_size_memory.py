"""Memory at real size (issue 23): the daemon against a plain diffusers script, and unloading.

Marker ``real`` (``make test-real``). For SD 1.5 and SDXL single files on a CPU (fp32, the
daemon's dtype there), both sides run as whole processes on one 64-pixel image:

* ``img2imgd once`` must not peak above the plain script (tests/support/plain_load.py:
  ``from_single_file`` with the same shipped configs) plus 10 %, in its own (anonymous)
  memory and in the kernel's peak RSS, which also counts the memory-mapped checkpoint;
* loading must not briefly hold a second copy of the weights beyond what diffusers itself
  needs: the daemon's peak over its RSS with the model loaded is at most the script's + 0.10,
  and its anonymous memory (RSS less the memory-mapped checkpoint) peaks within 25 % of the
  loaded RSS;
* ``unload_after`` gives the memory back: after the idle unload the process's RSS is within
  10 % of what it was before the first load (tests/support/unload_probe.py).

The figures are printed as a table at the end. SDXL runs last and only with 20 GiB free.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.models.single_file import ensure_config_dir
from tests.support.measured import Measured, run_measured
from tests.support.netguard_env import guarded_env
from tests.support.real_models import REAL_MODELS, default_folder
from tests.support.real_runs import GIB, build, enough_memory_for, run_once
from tests.support.workspace import DATA

pytestmark = [pytest.mark.real, pytest.mark.timeout(3600)]
SUPPORT = Path(__file__).resolve().parent / "support"
MODELS = ["sd15", "sdxl"]
ROWS: dict[str, dict[str, float]] = {}


COLUMNS = {
    "plain_peak": "plain peak", "daemon_peak": "daemon peak", "ratio": "ratio",
    "plain_anon": "plain peak anon", "daemon_anon": "daemon peak anon",
    "plain_loaded": "plain loaded", "daemon_loaded": "daemon loaded",
    "before": "before load", "after": "after unload",
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    lines = ["| model | " + " | ".join(COLUMNS.values()) + " |", "|" + " --- |" * 10]
    for model, row in ROWS.items():
        cells = {key: f"{value / GIB:.2f} GiB" for key, value in row.items()}
        if "plain_peak" in row and "daemon_peak" in row:
            cells["ratio"] = f"{row['daemon_peak'] / row['plain_peak']:.2f}"
        lines.append(f"| {model} | " + " | ".join(cells.get(k, "-") for k in COLUMNS) + " |")
    print(
        "\nREAL memory on CPU (fp32). peak: the process's max RSS (kernel); peak anon: its "
        "largest anonymous RSS sampled every 20 ms (RSS less the mapped checkpoint); loaded: "
        "RSS when the model was ready\n" + "\n".join(lines)
    )


@pytest.fixture(scope="module")
def shared_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-state")


def _checkpoint(model: str, tmp_path: Path) -> Path:
    if reason := enough_memory_for(model):
        pytest.skip(reason)
    return build(model, default_folder(), tmp_path / "build").path


@pytest.mark.parametrize("model", MODELS)
def test_the_daemon_needs_no_more_memory_than_plain_diffusers(
    model: str, shared_state: Path, tmp_path: Path
) -> None:
    checkpoint = _checkpoint(model, tmp_path)
    config = ensure_config_dir(REAL_MODELS[model].architecture, shared_state)  # type: ignore[arg-type]
    plain = run_measured(
        [sys.executable, str(SUPPORT / "plain_load.py"), str(checkpoint), str(config),
         str(DATA / "chelsea.png"), str(tmp_path / "plain.png"),
         *(["--xl"] if model == "sdxl" else [])],
        cwd=tmp_path, env=guarded_env(tmp_path / "plain.net", base=os.environ),
        log=tmp_path / "plain.log", marker="plain: loaded",
    )  # fmt: skip
    assert plain.returncode == 0, plain.output[-3000:]
    daemon = run_once(tmp_path / "daemon", default_folder(), shared_state, model=checkpoint.stem)
    assert daemon.measured.returncode == 0, daemon.measured.output[-3000:]
    assert daemon.network == [] and (tmp_path / "plain.net").read_text() == ""
    ours = daemon.measured
    ROWS.setdefault(model, {}).update(
        plain_peak=plain.peak_rss, daemon_peak=ours.peak_rss, plain_anon=plain.peak_anon,
        daemon_anon=ours.peak_anon, plain_loaded=_loaded(plain), daemon_loaded=_loaded(ours),
    )  # fmt: skip
    print(f"\nREAL {model} memory: plain {_figures(plain)}; daemon {_figures(ours)}")
    # The process's own memory (anonymous RSS): the like-for-like comparison.
    assert ours.peak_anon <= plain.peak_anon * 1.10
    # The kernel's peak also counts the mapped checkpoint, as much of it as the kernel kept
    # resident, which depends on the memory pressure of the moment (an SDXL run measured
    # 16.3 and 20.1 GiB on the same file). So the script's peak is taken as the larger of
    # what it measured and what it would have had with the whole file kept.
    plain_worst = max(plain.peak_rss, plain.peak_anon + checkpoint.stat().st_size)
    assert ours.peak_rss <= plain_worst * 1.10
    # Loading's own overhead (peak over steady) is no worse than diffusers': no second copy.
    # Against the script's worst case too, for the same reason (a run of SDXL failed on the
    # script's measured peak: 18.7 GiB, when the whole file kept would have made it 21.6).
    assert ours.peak_rss / _loaded(ours) <= plain_worst / _loaded(plain) + 0.10
    # What lies above the loaded RSS is the mapped checkpoint (page cache): the process's own
    # memory never holds a second copy of the weights (that would be x1.5 in fp16, x2 in fp32).
    assert ours.peak_anon <= _loaded(ours) * 1.25


@pytest.mark.parametrize("model", MODELS)
def test_unloading_gives_the_memory_back(model: str, shared_state: Path, tmp_path: Path) -> None:
    checkpoint = _checkpoint(model, tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    for name in ("single-file-configs", "tokenizers"):
        (shared_state / name).mkdir(exist_ok=True)
        (state / name).symlink_to(shared_state / name, target_is_directory=True)
    probe = run_measured(
        [sys.executable, str(SUPPORT / "unload_probe.py"), str(default_folder()), str(state),
         checkpoint.stem],
        cwd=tmp_path, env=guarded_env(tmp_path / "probe.net", base=os.environ),
        log=tmp_path / "probe.log",
    )  # fmt: skip
    assert probe.returncode == 0, probe.output[-3000:]
    assert (tmp_path / "probe.net").read_text() == ""
    rss = json.loads(probe.output.strip().splitlines()[-1])
    ROWS.setdefault(model, {}).update(before=rss["before"], after=rss["after"])
    print(
        f"\nREAL {model} unload: before {rss['before'] / GIB:.2f} GiB, loaded "
        f"{rss['loaded'] / GIB:.2f} GiB, after unload {rss['after'] / GIB:.2f} GiB"
    )
    assert rss["unloaded"] == [checkpoint.stem]
    assert rss["after"] <= rss["before"] * 1.10


def _loaded(run: Measured) -> int:
    assert run.marked_rss, "the loaded line never came (or the process was gone)"
    return run.marked_rss


def _figures(run: Measured) -> str:
    return (
        f"peak {run.peak_rss / GIB:.2f} GiB (anonymous {run.peak_anon / GIB:.2f} GiB), "
        f"loaded {_loaded(run) / GIB:.2f} GiB "
        f"(peak/loaded {run.peak_rss / _loaded(run):.2f}), {run.seconds:.0f} s"
    )
