"""The service under test, started as production starts it (`python -m service serve --workers N`)
in a process of its own, waited for on /readyz, and stopped with SIGTERM; or, the same way, the
bare reference app (bench/bare.py)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from bench.cpu import descendants
from service.db import PROJECT_DIR

READY_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30
LOG_TAIL_CHARACTERS = 3000
LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


class ServiceError(RuntimeError):
    """The service did not start or did not become ready; the message has its log's tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_kib(pid: int) -> int | None:
    """The process's resident memory (VmRSS) in KiB, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def _listening_socket_inodes(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on `port`, from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_address, state, inode = fields[1], fields[3], fields[9]
                if state == LISTEN_STATE and int(local_address.rpartition(":")[2], 16) == port:
                    inodes.add(inode)
    return inodes


class ServiceProcess:
    """`python -m service serve` (or, `bare`, `python -m bench.bare`) on 127.0.0.1:`port`, its
    output kept in `log_path`."""

    def __init__(
        self,
        *,
        database_url: str,
        jwt_secret: str,
        workers: int,
        pool_size: int,
        log_path: Path,
        bare: bool = False,
    ):
        self.workers = workers
        app = ["bench.bare"] if bare else ["service", "serve"]
        self.command = [sys.executable, "-m", *app, "--workers", str(workers)]
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "JWT_SECRET": jwt_secret,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            # As a user deploys it: an access line per request, and one per write.
            "LOG_LEVEL": "INFO",
            "MIGRATE_ON_START": "0",
            # No load balancer to drain for: stop at once.
            "SHUTDOWN_DRAIN_SECONDS": "0",
            # Every in-flight request at 64 connections gets a connection without queueing.
            "DB_POOL_MIN_SIZE": str(pool_size),
            "DB_POOL_MAX_SIZE": str(pool_size),
            # --webhooks delivers to a receiver on 127.0.0.1 (bench/webhooks.py).
            "WEBHOOK_ALLOW_PRIVATE": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ServiceProcess":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=PROJECT_DIR,
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches the kit, which stops it in order.
                start_new_session=True,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServiceError(f"the service exited at start:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as answer,
            ):
                if answer.status == 200 and len(self.worker_pids()) == self.workers:
                    return
            time.sleep(0.2)
        raise ServiceError(f"/readyz did not answer 200 within {READY_TIMEOUT_SECONDS} s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """The processes that serve: those holding a socket listening on the port (with
        --workers N, each worker has its own, through SO_REUSEPORT), however they were started."""
        if self.process is None:
            return []
        listening = _listening_socket_inodes(self.port)
        pids = []
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            with contextlib.suppress(OSError):
                fds = Path(f"/proc/{pid}/fd")
                links = {os.readlink(fds / fd) for fd in os.listdir(fds)}
                if any(f"socket:[{inode}]" in links for inode in listening):
                    pids.append(pid)
        return sorted(pids)

    def worker_rss_kib(self) -> dict[int, int | None]:
        return {pid: rss_kib(pid) for pid in self.worker_pids()}

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARACTERS:]
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        """SIGTERM, as a supervisor sends it; SIGKILL to its process group if it hangs."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
        return process.returncode
