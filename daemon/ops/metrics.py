"""Prometheus metrics, served on ``metrics_port`` (off by default) by prometheus_client.

One registry per daemon (not the library's global one), so that a process can hold several
daemons (the tests do) and so that only these metrics are served:

* ``img2imgd_jobs_total{profile, task, outcome}``: inputs done, failed and deferred;
* ``img2imgd_queue_length``: jobs waiting for the worker;
* ``img2imgd_job_seconds{task}``: how long done jobs took (a histogram);
* ``img2imgd_model_load_seconds{model}``: model loads in this process (a histogram);
* ``img2imgd_gpu_memory_bytes{device, kind}``: CUDA memory allocated and reserved by this
  process, when it renders on CUDA.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds: from a tiny model on a CPU (0.1 s) to a large SDXL render or a long video (an hour).
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
LOAD_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self, *, queue_length: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "img2imgd_jobs", "Inputs finished, by profile, task and outcome",
            ["profile", "task", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.job_seconds = Histogram(
            "img2imgd_job_seconds", "Seconds a done job took, from its start to its results",
            ["task"], buckets=JOB_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_load_seconds = Histogram(
            "img2imgd_model_load_seconds", "Seconds a model took to load, in this process",
            ["model"], buckets=LOAD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        queue = Gauge("img2imgd_queue_length", "Jobs waiting for the worker",
                      registry=self.registry)  # fmt: skip
        queue.set_function(lambda: float(queue_length()))
        self.registry.register(_GpuMemory())
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def finished(self, profile: str, task: str, outcome: str, seconds: float | None) -> None:
        self.jobs.labels(profile, task, outcome).inc()
        if outcome == "done" and seconds is not None:
            self.job_seconds.labels(task).observe(seconds)

    def model_loaded(self, model: str, seconds: float) -> None:
        self.model_load_seconds.labels(model).observe(seconds)

    def serve(self, address: str, port: int) -> None:
        """Listen for scrapes; a port in use is logged, and the daemon runs on without."""
        try:
            self._server, self._thread = start_http_server(port, address, self.registry)
        except OSError as exc:
            logger.error(
                "metrics: cannot listen on {}:{} ({}); the daemon runs without metrics. "
                "Set another metrics_port in img2imgd.yaml",
                address, port, exc.strerror or exc,
            )  # fmt: skip
            return
        logger.info("metrics for Prometheus at http://{}:{}/metrics", address, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _GpuMemory(Collector):
    """CUDA memory of this process, read at scrape time; nothing when torch is not loaded
    (a CPU or Ray daemon) or has no CUDA."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        torch = sys.modules.get("torch")  # never imported for a scrape
        if torch is None or not torch.cuda.is_initialized():
            return
        family = GaugeMetricFamily(
            "img2imgd_gpu_memory_bytes", "CUDA memory of this process", labels=["device", "kind"]
        )
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            family.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
            family.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # no fixed description: the devices are known only at scrape time
