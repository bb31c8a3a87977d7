"""Driving the service with wrk and bench/scenarios.lua, in a process of its own, and reading the
result line the script prints."""

import json
import shutil
import subprocess
from pathlib import Path

from bench.measurement import Measurement

SCRIPT = Path(__file__).resolve().parent / "scenarios.lua"
INSTALL_HINT = "wrk is not installed: apt-get install -y wrk (Debian, Ubuntu) or brew install wrk (macOS)"
RESULT_MARK = "BENCH_RESULT "
# A request slower than this is counted as a timeout error, not waited for.
REQUEST_TIMEOUT_SECONDS = 10
# wrk itself needs a little time to connect and to report beyond its --duration.
GRACE_SECONDS = 30


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no result; the message says which."""


def find_wrk() -> str:
    """wrk's path; WrkError with how to install it when it is missing."""
    path = shutil.which("wrk")
    if path is None:
        raise WrkError(INSTALL_HINT)
    return path


def run_wrk(
    *,
    base_url: str,
    scenario: str,
    connections: int,
    seconds: float,
    threads: int,
    data_file: Path,
    deletable_file: Path | None = None,
    path_and_query: str = "/",
    label: str | None = None,
) -> Measurement:
    """Run one scenario for `seconds` at `connections`; its row for the results table."""
    threads = max(1, min(threads, connections))
    command = [
        find_wrk(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        f"--timeout={REQUEST_TIMEOUT_SECONDS}s",
        f"--script={SCRIPT}",
        base_url + path_and_query,
        "--",
        scenario,
        str(data_file),
        str(threads),
    ]
    if deletable_file is not None:
        command.append(str(deletable_file))
    try:
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + GRACE_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish {scenario} within {seconds + GRACE_SECONDS:.0f} s") from None
    return parse_result(finished.stdout, finished.stderr, label or scenario, connections)


def parse_result(stdout: str, stderr: str, scenario: str, connections: int) -> Measurement:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise WrkError(f"wrk printed no result for {scenario}: {(stderr or stdout).strip()[-1000:]}")
    result = json.loads(lines[-1].removeprefix(RESULT_MARK))
    seconds = result["duration_us"] / 1e6
    socket_errors = {name: result[name] for name in ("connect", "read", "write", "timeout") if result[name]}
    statuses = {f"HTTP {status}": count for status, count in sorted(result["statuses"].items())}
    measurement = Measurement(
        scenario=scenario,
        connections=connections,
        tool="wrk",
        requests=result["requests"],
        seconds=seconds,
        requests_per_second=result["requests"] / seconds if seconds else 0.0,
        p50_ms=result["p50_us"] / 1000,
        p95_ms=result["p95_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        errors=result["status"] + sum(socket_errors.values()),
        error_detail={**statuses, **socket_errors},
    )
    if result["exhausted_threads"]:
        measurement.notes.append("ran out of tasks to delete before the end: requests/s is understated")
    return measurement
