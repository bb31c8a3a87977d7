"""`python -m bench`: a fresh database, seeded with COPY; the SQL ceiling with pgbench; the bare
reference app (bench/bare.py) and then the service, started as in production, loaded with wrk
scenario by scenario; one table, saved as JSON and PNG under bench/results/. Everything it
starts is stopped, and the database dropped, at the end, even on failure."""

import argparse
import dataclasses
import logging
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cpu import CpuClock, background_load
from bench.database import BenchDatabase, BenchDatabaseError
from bench.measurement import Measurement
from bench.memory import SoakResult, soak
from bench.pagination import DeepPage, PaginationError, find_deep_page
from bench.pgbench import (
    CeilingError,
    find_pgbench,
    get_statement,
    list_statement,
    pgbench_script,
    run_pgbench,
)
from bench.profile import ProfileError, Profiler, ProfileSummary, find_py_spy
from bench.report import (
    LOAD_CONNECTIONS,
    MANY_CLIENTS,
    RESULTS_DIR,
    batch_summary,
    evaluate_targets,
    format_table,
    format_targets,
    save_json,
    save_plot,
)
from bench.seed import Dataset, SeedError, SeedPlan, forget_later_tasks, seed
from bench.service_process import ServiceError, ServiceProcess, free_port
from bench.webhooks import WEBHOOK_SCENARIOS, Receiver, delivery_counts, subscribe_everyone
from bench.wrk import WrkError, find_wrk, run_wrk
from service.db import PROJECT_DIR
from service.devdb import EmbeddedPostgresError

log = logging.getLogger("bench")

SCENARIOS = ("list", "deep", "get", "changes", "create", "batch", "update", "complete", "delete", "mix")
# Which scenarios also run with a thousand clients.
MANY_CLIENT_SCENARIOS = ("list", "get", "mix")
# Which the bare reference app runs too, at the load's connections.
BARE_SCENARIOS = ("list", "get", "create")
# Room per worker beyond an even share of the connections: SO_REUSEPORT does not deal them
# out evenly, and a request that waits for a pooled connection measures the pool, not the service.
POOL_HEADROOM = 1.25
TOKEN_TTL_SECONDS = 24 * 3600
PAUSE_BETWEEN_RUNS_SECONDS = 2
SETTLE_SECONDS = 3
# The deletable pool: enough for the delete scenario at this many deletes per second.
DELETES_PER_SECOND_PROVISIONED = 6000
ROW_NAMES = {"deep": "list deep page"}
PROFILED_SCENARIOS = ("list", "get", "create")
# The log levels of the service's lines the report keeps and counts.
LOGGED_PROBLEMS = ("WARNING", "ERROR", "CRITICAL")
# Busier than this before the run (% of all cores), the machine is not quiet enough to trust.
BUSY_MACHINE_PERCENT = 10


def _parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s per scenario, 3 s warm-up: about 2 minutes")
    parser.add_argument("--duration", type=float, help="seconds per scenario (default 30, --quick 5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up (default 10, --quick 3)")
    parser.add_argument("--users", type=int, default=1000, help="ordinary users (default 1000)")
    parser.add_argument("--tasks-per-user", type=int, default=100, help="tasks of each (default 100)")
    parser.add_argument(
        "--heavy-tasks", type=int, default=100_000, help="tasks of the heavy user (default 100000)"
    )
    parser.add_argument("--deletable-tasks", type=int, help="tasks seeded for the delete scenario to delete")
    parser.add_argument(
        "--deep-page", type=int, default=900, help="which page the deep-page scenario asks for"
    )
    parser.add_argument(
        "--workers", type=int, default=cores, help=f"service worker processes (default {cores})"
    )
    parser.add_argument(
        "--pool-size", type=int, help="DB pool per worker (default: its share of --connections, +25%%)"
    )
    parser.add_argument(
        "--connections", type=int, default=LOAD_CONNECTIONS, help="load connections (default 64)"
    )
    parser.add_argument(
        "--many-clients", type=int, default=MANY_CLIENTS, help="the crowd (default 1000; 0: skip)"
    )
    parser.add_argument(
        "--threads", type=int, default=cores, help=f"wrk and pgbench threads (default {cores})"
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--no-bare", action="store_true", help="skip the bare reference app (no service ÷ bare ratios)"
    )
    parser.add_argument(
        "--soak", type=float, default=0, help="also run the mix this many seconds, sampling RSS"
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample one worker with py-spy during list, get and create"
    )
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help=f"then run {','.join(WEBHOOK_SCENARIOS)} again with every user subscribed to a local receiver",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where JSON and PNG go")
    return parser


@dataclasses.dataclass
class Options:
    duration: float
    warmup: float
    plan: SeedPlan
    deep_page: int
    workers: int
    pool_size: int
    connections: int
    many_clients: int
    threads: int
    scenarios: tuple[str, ...]
    bare: bool
    soak: float
    profile: bool
    webhooks: bool
    results_dir: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Options":
        duration = args.duration or (5.0 if args.quick else 30.0)
        warmup = args.warmup if args.warmup is not None else (3.0 if args.quick else 10.0)
        scenarios = tuple(name.strip() for name in args.scenarios.split(",") if name.strip())
        unknown = set(scenarios) - set(SCENARIOS)
        if unknown:
            raise SystemExit(
                f"error: unknown scenarios {', '.join(sorted(unknown))}; choose from {SCENARIOS}"
            )
        for name in (
            "users",
            "tasks_per_user",
            "heavy_tasks",
            "workers",
            "connections",
            "threads",
            "deep_page",
        ):
            if getattr(args, name) < 1:
                raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
        workers = args.workers
        pool_size = args.pool_size or math.ceil(args.connections / workers * POOL_HEADROOM)
        deletable = args.deletable_tasks
        if deletable is None:
            deletable = (
                max(20_000, round(DELETES_PER_SECOND_PROVISIONED * duration)) if "delete" in scenarios else 0
            )
        return cls(
            duration=duration,
            warmup=warmup,
            plan=SeedPlan(args.users, args.tasks_per_user, args.heavy_tasks, deletable),
            deep_page=args.deep_page,
            workers=workers,
            pool_size=pool_size,
            connections=args.connections,
            many_clients=args.many_clients,
            threads=args.threads,
            scenarios=scenarios,
            bare=not args.no_bare,
            soak=args.soak,
            profile=args.profile,
            webhooks=args.webhooks,
            results_dir=args.results_dir,
        )

    def runs(self) -> list[tuple[str, int]]:
        """(scenario, connections) in the order they run: reads before the writes change the data."""
        runs = []
        for scenario in self.scenarios:
            runs.append((scenario, self.connections))
            if self.many_clients and scenario in MANY_CLIENT_SCENARIOS:
                runs.append((scenario, self.many_clients))
        return runs


@dataclasses.dataclass
class Run:
    """Everything one run measured, for the report."""

    options: Options
    stamp: str = dataclasses.field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))
    # Taken before the service starts: the code measured, even if someone commits meanwhile.
    revision: str = dataclasses.field(default_factory=lambda: _git_revision())
    measurements: list[Measurement] = dataclasses.field(default_factory=list)
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)
    deep_page: DeepPage | None = None
    soak: SoakResult | None = None
    profiles: list[ProfileSummary] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    database: str = ""
    background_cpu_percent: float = 0.0
    postmaster_pid: int | None = None  # the embedded server's, for its share of the CPU


def _ceiling(run: Run, database_url: str, dataset: Dataset, work_dir: Path) -> None:
    """pgbench with the service's list and get SQL, before the service starts."""
    options = run.options
    statements = {"list": list_statement, "get": get_statement}
    for scenario, statement in statements.items():
        if scenario not in options.scenarios:
            continue
        name = f"pgbench {scenario}"
        try:
            pgbench = find_pgbench()
            try:
                script, notes = pgbench_script(*statement(), dataset)
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                # The SQL is read from the service's own loading code, which may change shape.
                raise CeilingError(f"cannot read the service's {scenario} SQL: {error!r}") from None
            log.info("running %s @%d for %.0f s", name, options.connections, options.duration)
            clock = CpuClock([], run.postmaster_pid).start()
            measurement = run_pgbench(
                pgbench=pgbench,
                database_url=database_url,
                scenario=name,
                script=script,
                notes=notes,
                connections=options.connections,
                seconds=options.duration,
                threads=options.threads,
                work_dir=work_dir,
            )
            measurement.cpu = clock.stop()
            run.measurements.append(measurement)
        except CeilingError as error:
            log.warning("%s", error)
            run.measurements.append(Measurement.not_run(name, options.connections, "pgbench", str(error)))


def _bare(run: Run, database_url: str, secret: str, data_file: Path, work_dir: Path) -> None:
    """The bare reference app on the same data, workers and pool: list, get and create, before
    the service starts (so nothing else holds the cores), each row the divisor of the service's."""
    options = run.options
    scenarios = [scenario for scenario in BARE_SCENARIOS if scenario in options.scenarios]
    if not options.bare or not scenarios:
        return
    log.info("starting the bare reference app: %d workers, pool %d each", options.workers, options.pool_size)
    bare = ServiceProcess(
        database_url=database_url, jwt_secret=secret, workers=options.workers,
        pool_size=options.pool_size, log_path=work_dir / "bare.log", bare=True,
    )  # fmt: skip

    def load(scenario: str, seconds: float) -> Measurement:
        return run_wrk(
            base_url=bare.base_url, scenario=scenario, connections=options.connections, seconds=seconds,
            threads=options.threads, data_file=data_file, label=f"bare {scenario}",
        )  # fmt: skip

    try:
        with bare:
            if options.warmup > 0:
                log.info(
                    "warming the bare app up with get @%d for %.0f s", options.connections, options.warmup
                )
                load("get", options.warmup)
            for scenario in scenarios:
                log.info("running bare %s @%d for %.0f s", scenario, options.connections, options.duration)
                clock = CpuClock(bare.worker_pids(), run.postmaster_pid).start()
                try:
                    measurement = load(scenario, options.duration)
                except WrkError as error:
                    log.warning("%s", error)
                    measurement = Measurement.not_run(
                        f"bare {scenario}", options.connections, "wrk", str(error)
                    )
                measurement.cpu = clock.stop()
                run.measurements.append(measurement)
                time.sleep(PAUSE_BETWEEN_RUNS_SECONDS)
    except (ServiceError, WrkError) as error:
        log.warning("the bare app: %s", error)
        run.notes.append(f"the bare reference app did not run: {str(error)[:300]}")


def _load(run: Run, service: ServiceProcess, dataset: Dataset, data_file: Path, deletable_file: Path) -> None:
    """Warm up, then each scenario in turn, then the soak if asked for."""
    options = run.options

    def load(scenario: str, connections: int, seconds: float, **extra: Any) -> Measurement:
        return run_wrk(
            base_url=service.base_url, scenario=scenario, connections=connections, seconds=seconds,
            threads=options.threads, data_file=data_file, **extra,
        )  # fmt: skip

    if "deep" in options.scenarios:
        heavy = dataset.heavy_user
        log.info("walking the heavy user's listing to page %d", options.deep_page)
        try:
            run.deep_page = find_deep_page(service.base_url, heavy.user_id, heavy.token, options.deep_page)
        except (PaginationError, TimeoutError) as error:
            run.deep_page = DeepPage(None, 0, f"walk failed: {error}")
        log.info("deep page: %s", run.deep_page)
    if options.warmup > 0:
        log.info("warming up with the mix @%d for %.0f s", options.connections, options.warmup)
        warmup = load("mix", options.connections, options.warmup)
        if warmup.errors:
            run.notes.append(f"warm-up had {warmup.errors} errors: {warmup.error_detail}")
    run.memory["after_warmup_kib"] = service.worker_rss_kib()
    for scenario, connections in options.runs():
        row_name = ROW_NAMES.get(scenario, scenario)
        extra: dict[str, Any] = {"label": row_name}
        if scenario == "deep":
            if run.deep_page is None or run.deep_page.path_and_query is None:
                reason = run.deep_page.reason if run.deep_page else "not walked"
                run.measurements.append(Measurement.not_run(row_name, connections, "wrk", reason))
                continue
            extra["path_and_query"] = run.deep_page.path_and_query
        if scenario == "delete":
            extra["deletable_file"] = deletable_file
        log.info("running %s @%d for %.0f s", row_name, connections, options.duration)
        profiler = None
        if options.profile and scenario in PROFILED_SCENARIOS and connections == options.connections:
            stacks_file = options.results_dir / f"{run.stamp}-{scenario}.stacks.txt"
            stacks_file.parent.mkdir(parents=True, exist_ok=True)
            profiler = Profiler(service.worker_pids()[0], max(1.0, options.duration - 2), stacks_file)
        clock = CpuClock(service.worker_pids(), run.postmaster_pid).start()
        try:
            measurement = load(scenario, connections, options.duration, **extra)
        except WrkError as error:
            log.warning("%s", error)
            measurement = Measurement.not_run(row_name, connections, "wrk", str(error))
        measurement.cpu = clock.stop()
        if profiler is not None:
            try:
                run.profiles.append(profiler.finish(row_name))
            except ProfileError as error:
                run.notes.append(f"profile of {row_name}: {error}")
            measurement.notes.append("profiled with py-spy while measured (sampling costs a little)")
            if measurement.cpu.service_kernel_share is not None:
                kernel_share = measurement.cpu.service_kernel_share
                measurement.notes.append(f"{kernel_share:.0%} of the workers' CPU was in the kernel")
        if scenario == "deep" and run.deep_page is not None:
            measurement.notes.append(f"page {run.deep_page.page} of the heavy user's listing")
        run.measurements.append(measurement)
        time.sleep(PAUSE_BETWEEN_RUNS_SECONDS)
    if options.soak > 0:
        log.info("soak: the mix @%d for %.0f s, sampling RSS every 10 s", options.connections, options.soak)
        clock = CpuClock(service.worker_pids(), run.postmaster_pid).start()
        run.soak = soak(
            service,
            options.soak,
            lambda seconds: load("mix", options.connections, seconds, label="mix (soak)"),
        )
        run.soak.measurement.cpu = clock.stop()
        run.measurements.append(run.soak.measurement)


def _with_webhooks(
    run: Run, service: ServiceProcess, database_url: str, data_file: Path, work_dir: Path
) -> None:
    """The write scenarios again, every user now subscribed to a receiver answering 204: the
    rows `<scenario> +webhook`, against the rows without. Writes append to the change log
    either way; what differs is the fan-out and delivery jobs running beside them."""
    options = run.options
    scenarios = [scenario for scenario in WEBHOOK_SCENARIOS if scenario in options.scenarios]
    if not options.webhooks or not scenarios:
        return
    with Receiver(free_port(), work_dir / "receiver.log") as receiver:
        subscribed = subscribe_everyone(database_url, receiver.url)
        log.info("subscribed %d users to %s", subscribed, receiver.url)
        for scenario in scenarios:
            label = f"{scenario} +webhook"
            log.info("running %s @%d for %.0f s", label, options.connections, options.duration)
            clock = CpuClock(service.worker_pids(), run.postmaster_pid).start()
            try:
                measurement = run_wrk(
                    base_url=service.base_url, scenario=scenario, connections=options.connections,
                    seconds=options.duration, threads=options.threads, data_file=data_file, label=label,
                )  # fmt: skip
            except WrkError as error:
                log.warning("%s", error)
                measurement = Measurement.not_run(label, options.connections, "wrk", str(error))
            measurement.cpu = clock.stop()
            counts = delivery_counts(database_url)
            measurement.notes.append(
                "webhook deliveries when it ended: "
                + ", ".join(f"{state} {count:,}" for state, count in sorted(counts.items()))
            )
            run.measurements.append(measurement)
            time.sleep(PAUSE_BETWEEN_RUNS_SECONDS)


def execute(run: Run, server_url: str | None) -> None:
    options = run.options
    secret = secrets.token_urlsafe(48)
    connections_needed = max(options.connections, options.workers * options.pool_size)
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as temporary,
        BenchDatabase(server_url, Path(temporary), connections_needed=connections_needed) as database,
    ):
        work_dir = Path(temporary)
        run.background_cpu_percent = background_load()
        if run.background_cpu_percent > BUSY_MACHINE_PERCENT:
            run.notes.append(
                f"before the run, other processes kept the machine {run.background_cpu_percent:.0f}% busy: "
                "they compete with the service for the cores, so its numbers are understated"
            )
        database_url = database.url
        run.database = database.description
        run.postmaster_pid = database.postmaster_pid
        log.info("seeding %s", options.plan)
        started = time.monotonic()
        dataset = seed(database_url, options.plan, secret, TOKEN_TTL_SECONDS)
        run.notes.append(f"seeded in {time.monotonic() - started:.1f} s with COPY")
        _ceiling(run, database_url, dataset, work_dir)
        data_file, deletable_file = work_dir / "scenario-data.txt", work_dir / "deletable-tasks.txt"
        dataset.write_scenario_data(data_file)
        dataset.write_deletable_tasks(deletable_file)
        _bare(run, database_url, secret, data_file, work_dir)
        forget_later_tasks(database_url, dataset)
        log.info("starting the service: %d workers, pool %d each", options.workers, options.pool_size)
        service = ServiceProcess(
            database_url=database_url, jwt_secret=secret, workers=options.workers,
            pool_size=options.pool_size, log_path=work_dir / "service.log",
        )  # fmt: skip
        with service:
            # Each worker hashes a dummy password (argon2, 64 MiB) as it starts: let that settle.
            time.sleep(SETTLE_SECONDS)
            run.memory["workers"] = service.worker_pids()
            run.memory["before_kib"] = service.worker_rss_kib()
            try:
                _load(run, service, dataset, data_file, deletable_file)
                _with_webhooks(run, service, database_url, data_file, work_dir)
            finally:
                run.memory["after_kib"] = service.worker_rss_kib()
                _keep_service_log(run, service.log_path)
            exit_code = service.stop()
            if exit_code not in (0, None):
                run.notes.append(f"the service exited with {exit_code} on SIGTERM")


def _keep_service_log(run: Run, log_path: Path) -> None:
    """Keep the service's warnings and errors beside the results, and count them. At INFO the
    log has a line per request (hundreds of MB in a full run): it is read a line at a time and
    only those are kept."""
    kept = run.options.results_dir / f"{run.stamp}-service.log"
    counts: dict[str, int] = {}
    last: dict[str, str] = {}
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open(errors="replace") as log_file, kept.open("w") as kept_file:
            for line in log_file:
                level = next((name for name in LOGGED_PROBLEMS if f'"level":"{name}"' in line), None)
                if level is not None:
                    kept_file.write(line)
                    counts[level] = counts.get(level, 0) + 1
                    last[level] = line.strip()
    except OSError:
        return
    for level, count in counts.items():
        run.notes.append(
            f"the service logged {count} {level} lines ({_shown(kept)}); last: {last[level][:300]}"
        )


def _git_revision() -> str:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True, check=False)
        return result.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (
        " with uncommitted changes" if git("status", "--porcelain", "--", "service", "sql") else ""
    )


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    lines = []
    for pid in memory.get("workers", []):
        stages = [memory.get(key, {}).get(pid) for key in ("before_kib", "after_warmup_kib", "after_kib")]
        shown = " -> ".join("?" if kib is None else f"{kib / 1024:.1f}" for kib in stages)
        lines.append(f"worker {pid} RSS MiB (ready -> warmed up -> after the run): {shown}")
    return lines


def _shown(path: Path) -> Path:
    return path.relative_to(PROJECT_DIR) if path.is_relative_to(PROJECT_DIR) else path


def report(run: Run, started_at: str, elapsed: float) -> None:
    options = run.options
    targets = evaluate_targets(run.measurements, options.connections, options.many_clients)
    print()
    table = format_table(run.measurements, options.connections, options.many_clients)
    batch = batch_summary(run.measurements, options.connections)
    print(table)
    print()
    print("targets (issue 15; the deep page's, issue 5):")
    print(format_targets(targets))
    if batch is not None:
        print(f"batch: {batch}")
    print()
    for line in _memory_lines(run.memory):
        print(line)
    if run.soak is not None:
        print(f"soak: {run.soak.summary()}")
    for profile in run.profiles:
        print(profile.format())
    notes = [*run.notes] + [f"{m.label}: {note}" for m in run.measurements for note in m.notes]
    for note in notes:
        print(f"note: {note}")
    record = {
        "started_at": started_at,
        "elapsed_seconds": round(elapsed, 1),
        "revision": run.revision,
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "database": run.database,
        "background_cpu_percent": round(run.background_cpu_percent, 1),
        "options": {**dataclasses.asdict(options), "results_dir": str(options.results_dir)},
        "measurements": [m.as_json() for m in run.measurements],
        "targets": [dataclasses.asdict(t) | {"verdict": t.verdict} for t in targets],
        "deep_page": dataclasses.asdict(run.deep_page) if run.deep_page else None,
        "memory": run.memory,
        "soak": {"samples": run.soak.samples, "growth": run.soak.growth, "grew": run.soak.grew}
        if run.soak
        else None,
        "profiles": [dataclasses.asdict(profile) for profile in run.profiles],
        "notes": notes,
        "batch": batch,
        "table": table,
    }
    json_path = options.results_dir / f"{run.stamp}.json"
    save_json(json_path, record)
    print(f"\nsaved {_shown(json_path)}")
    try:
        png_path = json_path.with_suffix(".png")
        save_plot(
            png_path,
            run.measurements,
            f"{started_at}, {options.workers} workers, rev {run.revision}",
            options.connections,
        )
        print(
            f"saved {png_path.relative_to(PROJECT_DIR) if png_path.is_relative_to(PROJECT_DIR) else png_path}"
        )
    except ImportError:
        print("no plot: matplotlib is missing (pip install -e '.[bench]')")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    logging.getLogger("yoyo").setLevel(logging.WARNING)
    # A SIGTERM unwinds like Ctrl-C, so the service is stopped and the database dropped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    options = Options.from_args(_parser().parse_args(argv))
    try:
        find_wrk()
        find_pgbench()
        if options.profile:
            find_py_spy()
    except (WrkError, CeilingError, ProfileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run = Run(options)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    started = time.monotonic()
    server_url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL") or None
    try:
        execute(run, server_url)
    except (BenchDatabaseError, EmbeddedPostgresError, SeedError, ServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the service is stopped and the database dropped", file=sys.stderr)
        return 130
    report(run, started_at, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
