"""The embedded development server runs, and as root it changes nothing outside its data folder."""

import pwd
from pathlib import Path

import psycopg

from service.devdb import EmbeddedPostgres, _bin_dir


def _modes_up_to_root(path: Path) -> dict[Path, int]:
    return {parent: parent.stat().st_mode for parent in [path, *path.parents]}


def test_embedded_server_starts_serves_and_stops_without_loosening_permissions(tmp_path: Path) -> None:
    data_dir = tmp_path / "private" / "pg"
    data_dir.parent.mkdir(mode=0o700)
    watched = {**_modes_up_to_root(data_dir.parent), **_modes_up_to_root(_bin_dir() / "postgres")}
    users = {entry.pw_name for entry in pwd.getpwall()}

    server = EmbeddedPostgres(data_dir, durable=False)
    with server as url, psycopg.connect(url) as conn:
        # PostgreSQL refuses to run as root, so when the suite runs as root this proves the
        # user-namespace start works.
        assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (str(server.pgdata),)

    assert not (server.pgdata / "postmaster.pid").exists()  # stopped
    assert {path: path.stat().st_mode for path in watched} == watched
    assert {entry.pw_name for entry in pwd.getpwall()} == users


def test_a_server_left_running_by_a_killed_run_is_replaced(tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path, durable=False)
    first.start()  # and never stopped, as when the service is killed
    second = EmbeddedPostgres(tmp_path, durable=False)
    with second as url, psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
