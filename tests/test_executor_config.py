"""The ``executor`` keys of img2imgd.yaml, checked by ``img2imgd check``; ``executor: local``
never imports Ray, and ``executor: ray`` without Ray installed says how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.workspace import DATA
from tests.test_cli import ENV, FAST, JOBS, QUICK, cli, drop, workspace


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("executor", "spark", "executor:"),
        ("ray_gpus_per_worker", -1, "ray_gpus_per_worker:"),
        ("ray_inflight_per_worker", 0, "ray_inflight_per_worker:"),
        ("ray_workers", 0, "ray_workers:"),
        # CPU workers: there are no GPUs to count, so the config says how many
        ("ray_gpus_per_worker", 0, "say how many with ray_workers: N"),
    ],
)
def test_check_refuses_a_bad_executor_key(tmp_path, state_dir, key, value, said):
    root = workspace(tmp_path, state_dir, {"p": FAST}, **{key: value})
    result = cli(root, "check")
    assert result.returncode == 2, result.stdout
    assert said in result.stdout, result.stdout


def run_without_ray(root: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """The CLI in a process where Ray cannot be imported (as on a default install)."""
    code = (
        "import sys; sys.modules['ray'] = None  # import ray fails, find_spec finds nothing\n"
        "from daemon.cli import main\n"
        f"code = main({list(args)!r})\n"
        "print('ray imported' if sys.modules.get('ray') else 'ray not imported')\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )  # fmt: skip


def test_executor_ray_without_ray_installed_says_how_to_install_it(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": FAST}, executor="ray")
    result = run_without_ray(root, "check", timeout=QUICK)
    assert result.returncode == 2, result.stdout
    assert "executor: ray needs Ray, which is not installed" in result.stdout
    assert "pip install 'img2imgd[ray]'" in result.stdout


def test_executor_local_paints_without_importing_ray(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": FAST})
    drop(root, "astronaut.png", "p/a.png")
    assert (DATA / "astronaut.png").exists()
    code = (
        "import sys\n"
        "from daemon.cli import main\n"
        "code = main(['once'])\n"
        "print('ray imported' if 'ray' in sys.modules else 'ray not imported')\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=JOBS,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert "ray not imported" in result.stdout
    assert (root / "outbox" / "p" / "a.png").exists()
