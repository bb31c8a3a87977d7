"""CPU time: of the service's workers during a scenario (is the service saturated?) and of the
whole machine before the run (is something else competing for the cores?)."""

import dataclasses
import os
import time
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
IDLE_SAMPLE_SECONDS = 3


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used; zeros when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    # The command name, in parentheses, may hold spaces: count fields after its closing one.
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) / TICKS_PER_SECOND, int(fields[12]) / TICKS_PER_SECOND


def _total_cpu_seconds(pids: list[int]) -> tuple[float, float]:
    times = [process_cpu_seconds(pid) for pid in pids]
    return sum(user for user, _ in times), sum(system for _, system in times)


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of all cores since boot."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle and iowait
    return sum(values) - idle, sum(values)


@dataclasses.dataclass
class CpuClock:
    """CPU used by some processes and by the machine between `start()` and `stop()`."""

    pids: list[int]
    started: float = 0.0
    process_seconds: tuple[float, float] = (0.0, 0.0)
    machine_ticks: tuple[int, int] = (0, 0)
    # After stop(): the share of the processes' CPU spent in the kernel (syscalls, networking).
    system_share: float | None = None

    def start(self) -> "CpuClock":
        self.started = time.monotonic()
        self.process_seconds = _total_cpu_seconds(self.pids)
        self.machine_ticks = _machine_ticks()
        return self

    def stop(self) -> tuple[float, float]:
        """(the processes' CPU as % of one core, the machine's busy CPU as % of all cores)."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        user, system = (
            now - before
            for now, before in zip(_total_cpu_seconds(self.pids), self.process_seconds, strict=True)
        )
        busy, total = (now - before for now, before in zip(_machine_ticks(), self.machine_ticks, strict=True))
        self.system_share = system / (user + system) if user + system else None
        return 100 * (user + system) / elapsed, (100 * busy / total if total else 0.0)


def background_load() -> float:
    """How busy the machine is, in % of all cores, over a few seconds before the run starts."""
    clock = CpuClock([]).start()
    time.sleep(IDLE_SAMPLE_SECONDS)
    return clock.stop()[1]
