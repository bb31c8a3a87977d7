"""The stairway: each migration applies, rolls back and applies again, one step at a time."""

import psycopg

from service.db import HEAD_MIGRATIONS, MIGRATIONS_DIR, migrate, rollback


def _schema(url: str) -> set[tuple[str, str]]:
    """Every table and index in the public schema, yoyo's own excepted."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename NOT LIKE '%yoyo%'"
        ).fetchall()
    return {(table, index) for table, index in rows}


def test_every_migration_has_a_rollback() -> None:
    for migration in MIGRATIONS_DIR.glob("*.sql"):
        if not migration.name.endswith(".rollback.sql"):
            assert migration.with_name(migration.name.replace(".sql", ".rollback.sql")).exists()


def test_stairway(empty_database_url: str) -> None:
    applied: list[str] = []
    for _ in HEAD_MIGRATIONS:
        (step,) = migrate(empty_database_url, 1)
        after_up = _schema(empty_database_url)
        assert rollback(empty_database_url, 1) == [step]
        assert migrate(empty_database_url, 1) == [step]
        assert _schema(empty_database_url) == after_up
        applied.append(step)
    assert set(applied) == HEAD_MIGRATIONS
    assert migrate(empty_database_url) == []
    assert rollback(empty_database_url) == applied[::-1]
    assert _schema(empty_database_url) == set()
