"""A real Ray cluster on 127.0.0.1, for the tests and the benchmark of ``executor: ray``.

Ray out of the box advertises the machine's interface address and its dashboard probes cloud
metadata; these machines may only talk to 127.0.0.0/8. The recipe from
``shared/SCALE-OUT.md`` (checked there with strace) keeps every connection on the loopback:
it must be in the environment before ``import ray``, in this process and in any daemon
started as a subprocess (:func:`loopback_environment`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LO = "127.0.0.1"
NOWHERE = "http://127.0.0.1:9"  # the dashboard's cloud-metadata probes go nowhere
_RAY_TMPDIR = tempfile.mkdtemp(prefix="ray")  # sessions out of the shared /tmp/ray

LOOPBACK: dict[str, str] = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node-IP lookup answers 127.0.0.1: no rewrite
    "RAY_USAGE_STATS_ENABLED": "0",
    "http_proxy": NOWHERE,
    "https_proxy": NOWHERE,
    "HTTP_PROXY": NOWHERE,
    "HTTPS_PROXY": NOWHERE,
    "no_proxy": "127.0.0.1,localhost",
    "NO_PROXY": "127.0.0.1,localhost",
    "RAY_TMPDIR": _RAY_TMPDIR,
}


def loopback_environment() -> dict[str, str]:
    """Set the recipe in this process (before Ray is imported); returns it for subprocesses."""
    os.environ.update(LOOPBACK)
    return dict(LOOPBACK)


@contextmanager
def local_cluster(gpu_nodes: int = 2, *, cpus_per_node: int = 1) -> Iterator[Any]:
    """A head with no GPU and `gpu_nodes` nodes of one CPU and one fake GPU each; a removed
    node is seen dead in about 4 s. Every Ray process is ended on the way out."""
    loopback_environment()
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "num_gpus": 0,
            "node_ip_address": LO,
            "include_dashboard": False,
            "_system_config": {
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 3,
                # Ray starts workers at nice 15: on a busy machine they would crawl (as they
                # do in service, hence the daemon's private instance sets it too).
                "worker_niceness": 0,
            },
        },
    )
    try:
        for _ in range(gpu_nodes):
            add_gpu_node(cluster, cpus=cpus_per_node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def add_gpu_node(cluster: Any, *, cpus: int = 1) -> Any:
    return cluster.add_node(num_cpus=cpus, num_gpus=1, node_ip_address=LO)


def ray_processes() -> list[int]:
    """PIDs of the processes running from this test session's Ray folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if _RAY_TMPDIR.encode() in command:
            found.append(int(entry.name))
    return found
