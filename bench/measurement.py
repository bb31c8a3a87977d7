"""One row of the results table: a scenario at a concurrency, as wrk or pgbench measured it."""

import dataclasses
from typing import Any

from bench.cpu import CpuShares


@dataclasses.dataclass
class Measurement:
    """Throughput, latency percentiles and errors of one run; `skipped` explains an empty row."""

    scenario: str
    connections: int
    tool: str  # "wrk" for the service, "pgbench" for the SQL ceiling
    requests: int = 0
    seconds: float = 0.0
    requests_per_second: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0
    cpu: CpuShares | None = None  # who used the cores while it ran
    error_detail: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None

    @property
    def label(self) -> str:
        return f"{self.scenario} @{self.connections}"

    @classmethod
    def not_run(cls, scenario: str, connections: int, tool: str, reason: str) -> "Measurement":
        return cls(scenario=scenario, connections=connections, tool=tool, skipped=reason)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
