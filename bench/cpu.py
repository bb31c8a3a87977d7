"""CPU time during each run, split between the service's workers, PostgreSQL, the load generator
and everything else, so that a starved service can be told from a saturated one, and a run
disturbed by other work on the machine from a clean one."""

import dataclasses
import os
import resource
import time
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
IDLE_SAMPLE_SECONDS = 3


def descendants(pid: int) -> list[int]:
    """The process's children, their children, and so on."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            child_pids = [int(child) for child in children.read_text().split()]
        except OSError:
            continue
        for child in child_pids:
            found += [child, *descendants(child)]
    return found


def process_cpu_seconds(pid: int, *, with_exited_children: bool = False) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used; zeros when it is gone. With
    `with_exited_children`, add those of its children that have ended (and been waited for)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    # The command name, in parentheses, may hold spaces: count fields after its closing one.
    fields = [int(field) for field in stat.rpartition(")")[2].split()[11:15]]
    user, system, children_user, children_system = fields
    if with_exited_children:
        user, system = user + children_user, system + children_system
    return user / TICKS_PER_SECOND, system / TICKS_PER_SECOND


def _postgres_seconds(postmaster_pid: int | None) -> float | None:
    """All the CPU PostgreSQL has used: the postmaster, its live processes, and its ended
    backends (counted in the postmaster once it has waited for them)."""
    if postmaster_pid is None:
        return None
    total = sum(process_cpu_seconds(postmaster_pid, with_exited_children=True))
    return total + sum(sum(process_cpu_seconds(pid)) for pid in descendants(postmaster_pid))


def _waited_children_seconds() -> float:
    """CPU of this process's ended children: wrk and pgbench, once each has finished."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of all cores since boot; busy counts what processes run (user,
    nice, system), as their own counters do, and leaves out interrupt handling."""
    user, nice, system, *_ = values = [
        int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ]
    return user + nice + system, sum(values)


@dataclasses.dataclass
class CpuShares:
    """CPU used during one run, each in % of one core (so 2 cores make 200%)."""

    service: float | None
    postgres: float | None  # None when the server is not one the kit started
    load_generator: float  # wrk, or pgbench for the ceiling rows
    other: float  # everything else on the machine: a test suite, a build, the kit itself
    machine: float  # the whole machine, in % of all cores
    service_kernel_share: float | None  # of the service's CPU, the part spent in the kernel


class CpuClock:
    """Reads the CPU counters at `start()` and at `stop()`."""

    def __init__(self, service_pids: list[int], postmaster_pid: int | None) -> None:
        self.service_pids = service_pids
        self.postmaster_pid = postmaster_pid

    def _read(self) -> tuple[float, float, float, float | None, float, tuple[int, int]]:
        times = [process_cpu_seconds(pid) for pid in self.service_pids]
        user, system = sum(t[0] for t in times), sum(t[1] for t in times)
        return (
            time.monotonic(),
            user,
            system,
            _postgres_seconds(self.postmaster_pid),
            _waited_children_seconds(),
            _machine_ticks(),
        )

    def start(self) -> "CpuClock":
        self.before = self._read()
        return self

    def stop(self) -> CpuShares:
        now = self._read()
        elapsed = max(now[0] - self.before[0], 1e-6)
        user, system = now[1] - self.before[1], now[2] - self.before[2]
        service = user + system
        postgres = None if now[3] is None or self.before[3] is None else now[3] - self.before[3]
        load_generator = now[4] - self.before[4]
        busy, total = (after - before for after, before in zip(now[5], self.before[5], strict=True))
        machine_seconds = busy / TICKS_PER_SECOND
        other = max(0.0, machine_seconds - service - (postgres or 0.0) - load_generator)
        return CpuShares(
            service=100 * service / elapsed if self.service_pids else None,
            postgres=None if postgres is None else 100 * postgres / elapsed,
            load_generator=100 * load_generator / elapsed,
            other=100 * other / elapsed,
            machine=100 * busy / total if total else 0.0,
            service_kernel_share=system / service if service else None,
        )


def background_load() -> float:
    """How busy the machine is, in % of all cores, over a few seconds before the run starts."""
    clock = CpuClock([], None).start()
    time.sleep(IDLE_SAMPLE_SECONDS)
    return clock.stop().machine
