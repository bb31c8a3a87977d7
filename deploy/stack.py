"""The example deployment on one machine: PgBouncer (transaction pooling) in front of PostgreSQL,
two instances of the service, and HAProxy in front of them, checking /readyz.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/tasks JWT_SECRET=... python -m deploy.stack

DATABASE_URL is PostgreSQL itself: the stack migrates it, sets the statement timeout the service
cannot send through PgBouncer on the role (in that database only), and points each instance's
LISTEN connection at it (DB_LISTEN_URL). Clients use http://127.0.0.1:8080; HAProxy's status
page is on 127.0.0.1:8404/stats. Ctrl-C stops everything. `.ci/test_deploy.py` starts it the
same way and restarts the instances, one after the other, under load.
"""

import argparse
import configparser
import contextlib
import csv
import io
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from service.db import PROJECT_DIR, hide_password, migrate

HERE = Path(__file__).resolve().parent
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60
STATEMENT_TIMEOUT = "10s"

log = logging.getLogger("deploy")


class StackError(RuntimeError):
    """A part of the stack did not start or stop in time; the message says which, with its log."""


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if found is None:
        raise StackError(f"{name} is not installed: apt-get install -y {name}")
    return found


def _unprivileged() -> dict[str, Any]:
    """Popen arguments that run PgBouncer and HAProxy as `nobody` when we are root: PgBouncer
    refuses to run as root, and neither needs to."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


class Stack:
    """PgBouncer, `instances` instances of the service and HAProxy, on 127.0.0.1 ports; files and
    logs in `work_dir`. `environment` adds to every instance's settings."""

    def __init__(
        self,
        database_url: str,
        jwt_secret: str,
        work_dir: Path,
        *,
        port: int = 8080,
        instance_ports: tuple[int, ...] = (8081, 8082),
        pgbouncer_port: int = 6432,
        stats_port: int = 8404,
        workers: int = 1,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.jwt_secret = jwt_secret
        self.work_dir = work_dir
        self.port = port
        self.instance_ports = instance_ports
        self.pgbouncer_port = pgbouncer_port
        self.stats_port = stats_port
        self.workers = workers
        self.environment = environment or {}
        self.base_url = f"http://127.0.0.1:{port}"
        self.pgbouncer: subprocess.Popen[bytes] | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.instances: list[subprocess.Popen[bytes] | None] = [None] * len(instance_ports)
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pgbouncer_url(self) -> str:
        parts = urlsplit(self.database_url)
        netloc = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{self.pgbouncer_port}", path="/tasks"))

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_database()
        self._start_pgbouncer()
        for index in range(len(self.instance_ports)):
            self.start_instance(index)
        self._start_haproxy()
        for index in range(len(self.instance_ports)):
            self.wait_until_in_rotation(index)
        log.info("the stack serves %s (HAProxy's status: %s)", self.base_url, self.stats_url)

    def _prepare_database(self) -> None:
        migrate(self.database_url)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            database = conn.info.dbname
            conn.execute(
                sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET statement_timeout = {}").format(
                    sql.Identifier(database), sql.Literal(STATEMENT_TIMEOUT)
                )
            )

    def _log(self, name: str) -> IO[bytes]:
        handle = (self.work_dir / f"{name}.log").open("ab")
        self._logs.append(handle)
        return handle

    def _own(self, *paths: Path) -> None:
        """Hand the files to the user PgBouncer and HAProxy run as."""
        user = _unprivileged()
        for path in paths:
            if user:
                os.chown(path, user["user"], user["group"])

    def _start_pgbouncer(self) -> None:
        parts = urlsplit(self.database_url)
        config = configparser.ConfigParser(delimiters=("=",), comment_prefixes=(";",), interpolation=None)
        config.read(HERE / "pgbouncer.ini")
        server = f"host={parts.hostname} port={parts.port or 5432} dbname={parts.path.lstrip('/')}"
        server += f" user={unquote(parts.username or 'postgres')}"
        if parts.password:
            server += f" password={unquote(parts.password)}"
        config["databases"] = {"tasks": server}
        users = self.work_dir / "pgbouncer-users.txt"
        users.write_text(f'"{unquote(parts.username or "postgres")}" ""\n')
        # On this one machine PgBouncer listens on 127.0.0.1 only and lets local clients in; it
        # logs in to PostgreSQL with the credentials of DATABASE_URL.
        config["pgbouncer"].update(
            listen_addr="127.0.0.1",
            listen_port=str(self.pgbouncer_port),
            auth_type="trust",
            auth_file=str(users),
        )
        path = self.work_dir / "pgbouncer.ini"
        with path.open("w") as file:
            config.write(file)
        path.chmod(0o600)  # it may hold the database password
        self._own(self.work_dir, path, users)
        log.info(
            "starting PgBouncer on 127.0.0.1:%d for %s", self.pgbouncer_port, hide_password(self.database_url)
        )
        self.pgbouncer = subprocess.Popen(
            [_binary("pgbouncer"), str(path)],
            stdout=self._log("pgbouncer"),
            stderr=subprocess.STDOUT,
            **_unprivileged(),
        )
        self._wait(lambda: self._connects(self.pgbouncer_url), self.pgbouncer, "PgBouncer", "pgbouncer")

    def _connects(self, url: str) -> bool:
        with contextlib.suppress(psycopg.Error), psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
            return True
        return False

    def start_instance(self, index: int) -> None:
        """`python -m service serve` on its port, through PgBouncer, listening to PostgreSQL."""
        port = self.instance_ports[index]
        environment = {
            **os.environ,
            "DATABASE_URL": self.pgbouncer_url,
            "DB_PGBOUNCER": "1",
            "DB_LISTEN_URL": self.database_url,
            "JWT_SECRET": self.jwt_secret,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MIGRATE_ON_START": "0",
            "TRUSTED_PROXIES": "127.0.0.1",
            **self.environment,
        }
        log.info("starting instance %d on 127.0.0.1:%d", index + 1, port)
        self.instances[index] = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--workers", str(self.workers)],
            cwd=PROJECT_DIR,
            env=environment,
            stdout=self._log(f"instance{index + 1}"),
            stderr=subprocess.STDOUT,
        )

    def stop_instance(self, index: int) -> int:
        """SIGTERM, as a supervisor sends it; its exit code once it has drained and stopped."""
        process = self.instances[index]
        if process is None:
            return 0
        self.instances[index] = None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise StackError(f"instance {index + 1} did not stop within {STOP_TIMEOUT_SECONDS} s") from None

    def restart_instance(self, index: int) -> int:
        """Stop an instance, start it again and wait until HAProxy sends it requests again; the
        exit code of the one stopped."""
        exit_code = self.stop_instance(index)
        self.start_instance(index)
        self.wait_until_in_rotation(index)
        return exit_code

    def _start_haproxy(self) -> None:
        config = self.work_dir / "haproxy.cfg"
        shutil.copyfile(HERE / "haproxy.cfg", config)
        self._own(config)
        environment = {
            "PATH": os.environ.get("PATH", ""),
            "TASKAPI_BIND": f"127.0.0.1:{self.port}",
            "TASKAPI_STATS": f"127.0.0.1:{self.stats_port}",
            **{
                f"TASKAPI_INSTANCE_{n + 1}": f"127.0.0.1:{port}" for n, port in enumerate(self.instance_ports)
            },
        }
        log.info("starting HAProxy on 127.0.0.1:%d", self.port)
        self.haproxy = subprocess.Popen(
            [_binary("haproxy"), "-db", "-f", str(config)],
            env=environment,
            stdout=self._log("haproxy"),
            stderr=subprocess.STDOUT,
            **_unprivileged(),
        )
        self._wait(lambda: bool(self.server_states()), self.haproxy, "HAProxy", "haproxy")

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/stats"

    def server_states(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of each instance (its `status`, UP or DOWN, and counters such as
        `stot`, the requests it was sent), from the status page's CSV; empty if unreachable."""
        try:
            with urllib.request.urlopen(self.stats_url + ";csv", timeout=2) as answer:
                text = answer.read().decode().removeprefix("# ")
        except OSError:
            return {}
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row for row in rows if row["pxname"] == "instances" and row["svname"] != "BACKEND"
        }

    def wait_until_in_rotation(self, index: int) -> None:
        name = f"instance{index + 1}"

        def up() -> bool:
            return self.server_states().get(name, {}).get("status") == "UP"

        self._wait(up, self.instances[index], f"instance {index + 1} (as HAProxy sees it)", name)

    def _wait(
        self, ready: Callable[[], bool], process: subprocess.Popen[bytes] | None, what: str, log_name: str
    ) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not ready():
            if process is None or process.poll() is not None or time.monotonic() > deadline:
                tail = (self.work_dir / f"{log_name}.log").read_text(errors="replace")[-3000:]
                raise StackError(f"{what} did not start:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Everything, in the order it depends on the rest: HAProxy, the instances, PgBouncer."""
        if self.haproxy is not None:
            self.haproxy.terminate()
            self.haproxy.wait(timeout=STOP_TIMEOUT_SECONDS)
            self.haproxy = None
        for index in range(len(self.instances)):
            self.stop_instance(index)
        if self.pgbouncer is not None:
            self.pgbouncer.send_signal(signal.SIGINT)  # "safe shutdown": after the clients are gone
            self.pgbouncer.wait(timeout=STOP_TIMEOUT_SECONDS)
            self.pgbouncer = None
        for handle in self._logs:
            handle.close()
        self._logs = []


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="where HAProxy listens (default 8080)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="of each instance")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="deploy: %(message)s")
    database_url, secret = os.environ.get("DATABASE_URL", ""), os.environ.get("JWT_SECRET", "")
    if not database_url or not secret:
        print("error: set DATABASE_URL (PostgreSQL itself) and JWT_SECRET", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # unwinds, stopping it all
    with tempfile.TemporaryDirectory(prefix="taskapi-stack-") as work_dir:
        try:
            with Stack(database_url, secret, Path(work_dir), port=args.port, workers=args.workers):
                print(f"serving on http://127.0.0.1:{args.port}; Ctrl-C stops it", flush=True)
                signal.pause()
        except StackError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
