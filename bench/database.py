"""The benchmark's own database: made fresh on the given server (or an embedded one), migrated,
and dropped at the end, whatever happened in between."""

import contextlib
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from service.db import hide_password, migrate
from service.devdb import EmbeddedPostgres

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10
# Room for the kit's own connections and PostgreSQL's reserved ones beside the load.
SPARE_CONNECTIONS = 10


class BenchDatabaseError(RuntimeError):
    """The database cannot be set up; the message says why and what to do."""


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


class BenchDatabase:
    """A fresh, migrated database named bench_<time>_<pid>, at `url` once entered.

    With no `server_url`, an embedded PostgreSQL runs in `work_dir` for the length of the run.
    The server must accept `connections_needed` connections at once; an embedded one is
    reconfigured and restarted when it would not.
    """

    def __init__(self, server_url: str | None, work_dir: Path, *, connections_needed: int) -> None:
        self.server_url = server_url
        self.work_dir = work_dir
        self.connections_needed = connections_needed + SPARE_CONNECTIONS
        self.name = f"bench_{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
        self.embedded: EmbeddedPostgres | None = None
        self.admin_url = ""
        self.url = ""
        self.created = False

    @property
    def description(self) -> str:
        where = "embedded PostgreSQL" if self.embedded else hide_password(self.admin_url)
        return f"database {self.name} on {where}"

    @property
    def postmaster_pid(self) -> int | None:
        """The embedded server's main process, whose CPU the report shows; None for another server."""
        if self.embedded is None:
            return None
        try:
            return int((self.embedded.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> "BenchDatabase":
        try:
            self._set_up()
            return self
        except BaseException:
            self._tear_down()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._tear_down()

    def _set_up(self) -> None:
        if self.server_url:
            self.admin_url = self.server_url
        else:
            self.embedded = EmbeddedPostgres(self.work_dir / "postgres")
            self.admin_url = self.embedded.start()
        self._ensure_max_connections()
        with self._admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.created = True
        self.url = with_database(self.admin_url, self.name)
        migrate(self.url)
        log.info("created and migrated %s", self.description)

    def _admin(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except psycopg.OperationalError as error:
            raise BenchDatabaseError(
                f"cannot connect to {hide_password(self.admin_url)}: {str(error).strip()}"
            ) from None

    def _ensure_max_connections(self) -> None:
        with self._admin() as admin:
            row = admin.execute("SHOW max_connections").fetchone()
            current = int(row[0]) if row else 0
            if current >= self.connections_needed:
                return
            if self.embedded is None:
                raise BenchDatabaseError(
                    f"the server allows {current} connections and the run needs "
                    f"{self.connections_needed}: raise max_connections, or lower --workers, "
                    "--pool-size or --connections"
                )
            admin.execute(f"ALTER SYSTEM SET max_connections = {self.connections_needed}")
        # max_connections takes effect only at start.
        self.embedded.stop()
        self.admin_url = self.embedded.start()

    def _tear_down(self) -> None:
        if self.created:
            with contextlib.suppress(BenchDatabaseError, psycopg.Error), self._admin() as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
                )
                self.created = False
            if self.created:
                log.warning("could not drop %s; drop it by hand", self.description)
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
