"""The workers' memory: RSS before and after the run, and the soak, which runs the mix for a long
while sampling RSS every 10 s and says whether memory grew beyond noise."""

import concurrent.futures
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.measurement import Measurement
from bench.service_process import ServiceProcess

SAMPLE_EVERY_SECONDS = 10
# Growth smaller than this (per worker, last third of the soak against the first) is noise:
# allocator arenas, caches and buffers settle within a few MiB.
NOISE_KIB = 4 * 1024
NOISE_FRACTION = 0.03
# Fewer samples than this (a soak under a minute) cannot tell settling from growth.
MIN_SAMPLES_TO_JUDGE = 6


@dataclasses.dataclass
class SoakResult:
    measurement: Measurement
    samples: list[dict[str, Any]]  # {"seconds": s, "rss_kib": {pid: kib}}
    growth: dict[str, dict[str, Any]]  # pid -> {"start_kib", "end_kib", "growth_kib", "grew"}

    @property
    def grew(self) -> bool | None:
        """Whether any worker grew beyond noise; None when the soak was too short to tell."""
        if not self.growth:
            return None
        return any(worker["grew"] for worker in self.growth.values())

    def summary(self) -> str:
        parts = [
            f"worker {pid}: {w['start_kib'] / 1024:.1f} -> {w['end_kib'] / 1024:.1f} MiB "
            f"({w['growth_kib'] / 1024:+.1f} MiB{', GREW' if w['grew'] else ''})"
            for pid, w in self.growth.items()
        ]
        if self.grew is None:
            return f"too short to judge: fewer than {MIN_SAMPLES_TO_JUDGE} samples, 10 s apart"
        verdict = "memory grew beyond noise" if self.grew else "no growth beyond noise"
        return f"{verdict} (threshold {NOISE_KIB // 1024} MiB or {NOISE_FRACTION:.0%}); " + "; ".join(parts)


def growth_by_worker(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per worker: the mean RSS of the soak's first third against its last third (so a worker
    that settles early and then holds steady has not grown)."""
    pids = {pid for sample in samples for pid in sample["rss_kib"]}
    growth = {}
    for pid in sorted(pids):
        series = [s["rss_kib"][pid] for s in samples if s["rss_kib"].get(pid) is not None]
        if len(series) < MIN_SAMPLES_TO_JUDGE:
            continue
        third = max(1, len(series) // 3)
        start, end = statistics.mean(series[:third]), statistics.mean(series[-third:])
        threshold = max(NOISE_KIB, start * NOISE_FRACTION)
        growth[str(pid)] = {
            "start_kib": round(start),
            "end_kib": round(end),
            "growth_kib": round(end - start),
            "grew": end - start > threshold,
        }
    return growth


def soak(service: ServiceProcess, seconds: float, run_mix: Callable[[float], Measurement]) -> SoakResult:
    """Run `run_mix(seconds)` in a thread while sampling the workers' RSS every 10 s."""
    samples = []
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(run_mix, seconds)
        deadline = started + seconds + 120
        while time.monotonic() < deadline:
            samples.append(
                {"seconds": round(time.monotonic() - started, 1), "rss_kib": service.worker_rss_kib()}
            )
            try:
                measurement = load.result(timeout=SAMPLE_EVERY_SECONDS)
                break
            except concurrent.futures.TimeoutError:
                continue
        else:
            measurement = load.result(timeout=SAMPLE_EVERY_SECONDS)
    samples.append({"seconds": round(time.monotonic() - started, 1), "rss_kib": service.worker_rss_kib()})
    return SoakResult(measurement, samples, growth_by_worker(samples))
