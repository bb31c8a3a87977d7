"""Where a worker spends its time: py-spy samples one worker during a scenario, and the samples are
summed by library (marshmallow, PyJWT, asyncpg, aiohttp, logging, …) and by function."""

import collections
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

SAMPLES_PER_SECOND = 100
INSTALL_HINT = "py-spy is not installed: pip install -e '.[bench]' (or pip install py-spy)"
# A sample goes to the first of these found walking its stack from the innermost frame out;
# C code (orjson, asyncpg's protocol, hashing) counts in the Python frame that called it.
CATEGORIES = (
    # With uvloop the loop itself is C: a sample whose innermost Python frame is run_app is in
    # the loop's own polling, socket reads and callback dispatch (and the syscalls under them).
    ("event loop in C (uvloop: polling, socket reads)", "run_app ("),
    ("marshmallow (schema load/dump)", "/marshmallow/"),
    ("PyJWT (token decode)", "/jwt/"),
    ("logging", "/logging/"),
    ("prometheus_client (metrics)", "/prometheus_client/"),
    ("asyncpg (pool, protocol)", "/asyncpg/"),
    ("yarl / multidict (URLs, headers)", "/yarl/"),
    ("aiohttp (HTTP, routing, responses)", "/aiohttp/"),
    ("asyncio (event loop)", "/asyncio/"),
    ("service code (incl. orjson, uuid)", "/service/"),
)
TOP_FUNCTIONS = 12


class ProfileError(RuntimeError):
    """py-spy is missing or failed; the message says which."""


def find_py_spy() -> str:
    beside_python = Path(sys.executable).parent / "py-spy"
    found = shutil.which("py-spy") or (str(beside_python) if beside_python.exists() else None)
    if found is None:
        raise ProfileError(INSTALL_HINT)
    return found


@dataclasses.dataclass
class ProfileSummary:
    scenario: str
    pid: int
    samples: int
    by_category: list[tuple[str, float]]  # (category, share of samples)
    by_function: list[tuple[str, float]]  # (innermost frame, share of samples)
    stacks_file: str

    def format(self) -> str:
        lines = [f"profile of worker {self.pid} during {self.scenario} ({self.samples} samples while busy):"]
        lines += [f"  {share:6.1%}  {name}" for name, share in self.by_category]
        lines.append("  innermost Python functions:")
        lines += [f"  {share:6.1%}  {frame}" for frame, share in self.by_function]
        lines.append(f"  stacks (collapsed, for flamegraph.pl or speedscope): {self.stacks_file}")
        return "\n".join(lines)


class Profiler:
    """py-spy recording one worker for `seconds`, without pausing it (--nonblocking)."""

    def __init__(self, pid: int, seconds: float, stacks_file: Path) -> None:
        self.pid = pid
        self.stacks_file = stacks_file
        command = [find_py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", str(SAMPLES_PER_SECOND), "--format", "raw", "--nonblocking", "--full-filenames"]
        command += ["--output", str(stacks_file)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.seconds = seconds

    def finish(self, scenario: str) -> ProfileSummary:
        try:
            _, errors = self.process.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise ProfileError("py-spy did not finish") from None
        if not self.stacks_file.exists():
            raise ProfileError(f"py-spy wrote no samples: {errors.strip()[-500:]}")
        return summarize(self.stacks_file, scenario, self.pid)


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, marker in CATEGORIES:
            if marker in frame:
                return name
    return "other"


def summarize(stacks_file: Path, scenario: str, pid: int) -> ProfileSummary:
    """Shares of samples by category and by innermost frame, from py-spy's collapsed stacks."""
    categories: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks_file.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        categories[_category(frames)] += count
        functions[_shorten(frames[-1])] += count
    return ProfileSummary(
        scenario=scenario,
        pid=pid,
        samples=total,
        by_category=[(name, count / total) for name, count in categories.most_common()] if total else [],
        by_function=[(name, count / total) for name, count in functions.most_common(TOP_FUNCTIONS)]
        if total
        else [],
        stacks_file=str(stacks_file),
    )


def _shorten(frame: str) -> str:
    """`function (…/site-packages/package/module.py:12)` as `function (package/module.py:12)`."""
    function, _, location = frame.partition(" (")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in location:
            location = location.split(marker, 1)[1].lstrip("0123456789./")
            break
    else:
        location = location.replace(str(Path(__file__).resolve().parent.parent) + "/", "")
    return f"{function} ({location}"
