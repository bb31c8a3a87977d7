"""The report: the one results table, the issue's targets next to the numbers (and each row's
verdict in it), the JSON record and the PNG plot under bench/results/."""

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from bench.measurement import Measurement

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The targets of issue 15: the service's features cost at most 10% of the bare app's throughput
# (15% for create); p99 under 50 ms at 64 connections for these scenarios, p95 under 500 ms
# with a thousand clients for those; no errors anywhere. And issue 5's, for the deep page.
BARE_FRACTIONS = {"list": 0.90, "get": 0.90, "create": 0.85}
P99_AT_64_MS = 50.0
P99_SCENARIOS = ("list", "get", "create", "update", "complete", "delete")
P95_AT_1000_MS = 500.0
P95_SCENARIOS = ("list", "get", "mix")
DEEP_PAGE_FACTOR = 1.5
LOAD_CONNECTIONS = 64
MANY_CLIENTS = 1000
BATCH_SIZE = 100  # creates per batch request (bench/scenarios.lua)


@dataclasses.dataclass
class Target:
    name: str
    measured: str
    met: bool | None  # None: could not be measured in this run

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "n/a"}[self.met]


def _find(
    measurements: list[Measurement], scenario: str, connections: int, tool: str = "wrk"
) -> Measurement | None:
    for measurement in measurements:
        same = (measurement.scenario, measurement.connections, measurement.tool) == (
            scenario,
            connections,
            tool,
        )
        if same and measurement.skipped is None:
            return measurement
    return None


def ceiling_ratios(measurements: list[Measurement]) -> dict[str, float]:
    """Service requests/s ÷ pgbench transactions/s, for list and get at pgbench's connections."""
    ratios = {}
    for scenario in ("list", "get"):
        ceiling = next(
            (m for m in measurements if m.scenario == f"pgbench {scenario}" and not m.skipped), None
        )
        service = _find(measurements, scenario, ceiling.connections) if ceiling else None
        if service and ceiling and ceiling.requests_per_second:
            ratios[scenario] = service.requests_per_second / ceiling.requests_per_second
    return ratios


def bare_ratios(measurements: list[Measurement]) -> dict[str, float]:
    """Service requests/s ÷ the bare app's, for list, get and create at the bare app's connections."""
    ratios = {}
    for scenario in BARE_FRACTIONS:
        bare = next((m for m in measurements if m.scenario == f"bare {scenario}" and not m.skipped), None)
        service = _find(measurements, scenario, bare.connections) if bare else None
        if service and bare and bare.requests_per_second:
            ratios[scenario] = service.requests_per_second / bare.requests_per_second
    return ratios


def _is_service(measurement: Measurement) -> bool:
    return (
        measurement.tool == "wrk" and not measurement.scenario.startswith("bare ") and not measurement.skipped
    )


def row_checks(
    measurement: Measurement,
    ratios: dict[str, float],
    load_connections: int = LOAD_CONNECTIONS,
    many_clients: int = MANY_CLIENTS,
) -> list[tuple[str, bool]]:
    """The targets that apply to one row of the service, each with whether the row meets it."""
    if not _is_service(measurement):
        return []
    scenario, connections = measurement.scenario, measurement.connections
    checks = []
    if connections == load_connections and scenario in ratios:
        checks.append(("÷bare", ratios[scenario] >= BARE_FRACTIONS[scenario]))
    if connections == load_connections and scenario in P99_SCENARIOS and measurement.p99_ms is not None:
        checks.append(("p99", measurement.p99_ms < P99_AT_64_MS))
    if connections == many_clients and scenario in P95_SCENARIOS and measurement.p95_ms is not None:
        checks.append(("p95", measurement.p95_ms < P95_AT_1000_MS))
    checks.append(("errors", measurement.errors == 0))
    return checks


def _row_verdict(checks: list[tuple[str, bool]]) -> str:
    missed = [name for name, met in checks if not met]
    if not checks:
        return ""
    return "MISSED " + ", ".join(missed) if missed else "met"


def batch_summary(measurements: list[Measurement], load_connections: int = LOAD_CONNECTIONS) -> str | None:
    """Tasks per second created in batches, against single creates."""
    batch = _find(measurements, "batch", load_connections)
    if batch is None:
        return None
    tasks = batch.requests_per_second * BATCH_SIZE
    summary = f"{batch.requests_per_second:,.1f} batches/s of {BATCH_SIZE} creates = {tasks:,.0f} tasks/s"
    create = _find(measurements, "create", load_connections)
    if create is not None and create.requests_per_second:
        single = create.requests_per_second
        summary += f", {tasks / single:.1f}x the tasks of single creates ({single:,.0f}/s)"
    return summary


def _ratio(value: float) -> str:
    # Rounded down, so a ratio just short of a target never reads as meeting it.
    return f"{math.floor(value * 1000) / 1000:.3f}"


def _errors(rows: list[Measurement]) -> tuple[int, str]:
    total = sum(row.errors for row in rows)
    which = ", ".join(
        f"{row.scenario}: " + ", ".join(f"{kind} {count}" for kind, count in row.error_detail.items())
        for row in rows
        if row.errors
    )
    return total, which


def evaluate_targets(
    measurements: list[Measurement],
    load_connections: int = LOAD_CONNECTIONS,
    many_clients: int = MANY_CLIENTS,
) -> list[Target]:
    """The issues' targets, each with what was measured; the limits are the issues' whatever the
    connection counts, so a run at other counts is judged against the same numbers."""
    targets = []
    ratios = bare_ratios(measurements)
    for scenario, fraction in BARE_FRACTIONS.items():
        ratio = ratios.get(scenario)
        targets.append(
            Target(
                f"{scenario} >= {fraction:.2f} x bare app @{load_connections}",
                _ratio(ratio) if ratio is not None else "not measured",
                None if ratio is None else ratio >= fraction,
            )
        )
    for scenarios, connections, percentile, limit in (
        (P99_SCENARIOS, load_connections, "p99_ms", P99_AT_64_MS),
        (P95_SCENARIOS, many_clients, "p95_ms", P95_AT_1000_MS),
    ):
        if not connections:
            continue
        name = percentile.removesuffix("_ms")
        for scenario in scenarios:
            row = _find(measurements, scenario, connections)
            value = getattr(row, percentile) if row else None
            targets.append(
                Target(
                    f"{scenario} {name} < {limit:.0f} ms @{connections}",
                    f"{value:.1f} ms" if value is not None else "not measured",
                    None if value is None else value < limit,
                )
            )
    for connections in (load_connections, many_clients):
        if not connections:
            continue
        rows = [m for m in measurements if _is_service(m) and m.connections == connections]
        total, which = _errors(rows)
        targets.append(
            Target(
                f"zero errors @{connections}",
                f"{total}" + (f" ({which})" if which else "") if rows else "not measured",
                None if not rows else total == 0,
            )
        )
    first_page = _find(measurements, "list", load_connections)
    deep = _find(measurements, "list deep page", load_connections)
    name = f"deep page p50 within {DEEP_PAGE_FACTOR}x of the first page's (issue 5)"
    if first_page and deep and first_page.p50_ms and deep.p50_ms:
        factor = deep.p50_ms / first_page.p50_ms
        targets.append(
            Target(
                name,
                f"{factor:.2f}x ({deep.p50_ms:.1f} vs {first_page.p50_ms:.1f} ms)",
                factor <= DEEP_PAGE_FACTOR,
            )
        )
    else:
        targets.append(Target(name, "not measured", None))
    return targets


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}%"


def format_table(
    measurements: list[Measurement],
    load_connections: int = LOAD_CONNECTIONS,
    many_clients: int = MANY_CLIENTS,
) -> str:
    """The results as one fixed-width table, each service row with its verdict on the targets."""
    ratios = ceiling_ratios(measurements)
    to_bare = bare_ratios(measurements)
    header = (
        "scenario",
        "conns",
        "requests/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "÷ pgbench",
        "÷ bare",
        "CPU: app",
        "pg",
        "load",
        "other",
        "targets",
    )
    rows = []
    for m in measurements:
        if m.skipped:
            rows.append((m.scenario, str(m.connections), f"n/a ({m.skipped})", *[""] * (len(header) - 3)))
            continue
        ceiling = next((c for c in measurements if c.scenario == f"pgbench {m.scenario}"), None)
        same_load = ceiling is not None and ceiling.connections == m.connections
        ratio = ratios.get(m.scenario) if m.tool == "wrk" and same_load else None
        bare = next((b for b in measurements if b.scenario == f"bare {m.scenario}"), None)
        bare_ratio = to_bare.get(m.scenario) if bare and bare.connections == m.connections else None
        rows.append(
            (
                m.scenario,
                str(m.connections),
                f"{m.requests_per_second:,.0f}",
                _milliseconds(m.p50_ms),
                _milliseconds(m.p95_ms),
                _milliseconds(m.p99_ms),
                str(m.errors),
                _ratio(ratio) if ratio is not None else "",
                _ratio(bare_ratio) if bare_ratio is not None else "",
                _percent(m.cpu.service if m.cpu else None),
                _percent(m.cpu.postgres if m.cpu else None),
                _percent(m.cpu.load_generator if m.cpu else None),
                _percent(m.cpu.other if m.cpu else None),
                _row_verdict(row_checks(m, to_bare, load_connections, many_clients)),
            )
        )
    measured = [header, *(row for row in rows if not row[2].startswith("n/a"))]
    widths = [max(len(row[i]) for row in measured) for i in range(len(header))]
    widths[0] = max(len(row[0]) for row in [header, *rows])
    lines = []
    for number, row in enumerate([header, *rows]):
        if row[2].startswith("n/a"):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}")
        else:
            cells = (
                [f"{row[0]:<{widths[0]}}"]
                + [f"{cell:>{widths[i + 1]}}" for i, cell in enumerate(row[1:-1])]
                + [row[-1]]
            )  # the verdict, left-aligned, last
            lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("-" * len(lines[0]))
    lines.append(
        "CPU while each ran, in % of one core (this machine has "
        f"{os.cpu_count()}): the app's workers (the service's; the bare app's in its rows), PostgreSQL,"
        " the load generator (wrk; pgbench for its rows), and everything else on the machine."
    )
    lines.append(
        "targets: the issue's, for each row of the service: ÷bare (list, get >= 0.90, create >= 0.85),"
        f" p99 < {P99_AT_64_MS:.0f} ms @{load_connections}, p95 < {P95_AT_1000_MS:.0f} ms @{many_clients},"
        " no errors."
    )
    return "\n".join(lines)


def format_targets(targets: list[Target]) -> str:
    width = max(len(target.name) for target in targets)
    return "\n".join(f"{target.verdict:<7} {target.name:<{width}}  {target.measured}" for target in targets)


def save_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def save_plot(path: Path, measurements: list[Measurement], title: str, load_connections: int) -> None:
    """Two bar charts side by side: requests/s and p99 by scenario, service and pgbench."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in measurements if not m.skipped][::-1]  # matplotlib draws bottom-up
    labels = [m.label for m in rows]
    colours = [
        "tab:gray"
        if m.tool == "pgbench"
        else "tab:green"
        if m.scenario.startswith("bare ")
        else ("tab:blue" if m.connections <= load_connections else "tab:orange")
        for m in rows
    ]
    figure, (throughput, latency) = plt.subplots(
        1, 2, figsize=(12, 0.42 * len(rows) + 1.8), sharey=True, constrained_layout=True
    )
    throughput.barh(labels, [m.requests_per_second for m in rows], color=colours)
    throughput.set_xlabel("requests/s (pgbench: transactions/s; batch: of 100 creates)")
    throughput.set_xscale("log")
    for index, m in enumerate(rows):
        label = f" {m.requests_per_second:,.0f}" + (f"  ({m.errors:,} errors)" if m.errors else "")
        colour = "tab:red" if m.errors else "black"
        throughput.annotate(label, (m.requests_per_second, index), va="center", fontsize=8, color=colour)
    latency.barh(labels, [m.p99_ms or 0 for m in rows], color=colours)
    latency.set_xlabel("p99 latency, ms (log scale)")
    latency.set_xscale("log")
    latency.axvline(
        P99_AT_64_MS, color="tab:red", linestyle="--", linewidth=1, label="50 ms: p99 target at 64"
    )
    for index, m in enumerate(rows):
        if m.p99_ms:
            latency.annotate(f" {m.p99_ms:.1f}", (m.p99_ms, index), va="center", fontsize=8)
    latency.legend(loc="lower right", fontsize=8)
    for axes in (throughput, latency):
        axes.grid(axis="x", which="major", alpha=0.3)
        axes.margins(x=0.25)
    legend = (
        f"blue: service @{load_connections}, orange: more clients, green: the bare app, "
        "grey: pgbench (SQL only)"
    )
    figure.suptitle(f"{title}\n{legend}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
