"""CPU time: of the service's workers during a scenario (is the service saturated?) and of the
whole machine before the run (is something else competing for the cores?)."""

import dataclasses
import os
import time
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
IDLE_SAMPLE_SECONDS = 3


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used, 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name, in parentheses, may hold spaces: count fields after its closing one.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


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
    process_seconds: float = 0.0
    machine_ticks: tuple[int, int] = (0, 0)

    def start(self) -> "CpuClock":
        self.started = time.monotonic()
        self.process_seconds = sum(process_cpu_seconds(pid) for pid in self.pids)
        self.machine_ticks = _machine_ticks()
        return self

    def stop(self) -> tuple[float, float]:
        """(the processes' CPU as % of one core, the machine's busy CPU as % of all cores)."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        used = sum(process_cpu_seconds(pid) for pid in self.pids) - self.process_seconds
        busy, total = (now - before for now, before in zip(_machine_ticks(), self.machine_ticks, strict=True))
        return 100 * used / elapsed, (100 * busy / total if total else 0.0)


def background_load() -> float:
    """How busy the machine is, in % of all cores, over a few seconds before the run starts."""
    clock = CpuClock([]).start()
    time.sleep(IDLE_SAMPLE_SECONDS)
    return clock.stop()[1]
