"""The named queries of sql/*.sql, loaded as functions that run on an asyncpg connection.

A file holds queries in aiosql's format: a `-- name: get_task(user_id, task_id)^` line, comment
lines that become the docstring, then the statement, whose `:names` must be the declared
parameters. The suffix says what comes back: `^` one row (or None), `$` one value, `!` nothing,
none at all every row. Calls pass parameters by name: `await queries.get_task(conn, user_id=1,
task_id=2)`. Our own ~40 lines rather than aiosql: its asyncpg adapter calls dir() on the
connection for every query, which costs more than the rest of a small request's Python.
"""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

_HEADER = re.compile(r"--\s*name:\s*(?P<name>\w+)\((?P<params>[\w\s,]*)\)(?P<returns>[\^$!]?)\s*$")
_PARAMETER = re.compile(r"(?<![:\w]):(?P<name>[A-Za-z_]\w*)")


def numbered(sql: str, names: list[str]) -> str:
    """The statement with each `:name` replaced by `$n`, n its place in `names` (grown as met)."""

    def number(match: re.Match[str]) -> str:
        if match["name"] not in names:
            names.append(match["name"])
        return f"${names.index(match['name']) + 1}"

    return _PARAMETER.sub(number, sql)


class Query:
    """One named statement, called with a connection and its parameters by name."""

    def __init__(self, name: str, doc: str, sql: str, params: list[str], returns: str, where: str) -> None:
        used: list[str] = []
        self.sql = numbered(sql, used)
        if set(used) != set(params):
            raise ValueError(f"{where}: {name} declares ({', '.join(params)}) but uses ({', '.join(used)})")
        self.__name__, self.__doc__, self.params = name, doc, used
        run: dict[str, Callable[..., Any]] = {
            "^": asyncpg.Connection.fetchrow,
            "$": asyncpg.Connection.fetchval,
            "!": asyncpg.Connection.execute,
            "": asyncpg.Connection.fetch,
        }
        self._run = run[returns]

    async def __call__(self, conn: asyncpg.Connection, **values: Any) -> Any:
        return await self._run(conn, self.sql, *(values[name] for name in self.params))


class Queries:
    """Every query of a folder's .sql files, as attributes."""

    def __init__(self, folder: Path) -> None:
        for path in sorted(folder.glob("*.sql")):
            for query in _parse(path):
                if hasattr(self, query.__name__):
                    raise ValueError(f"{path}: a query named {query.__name__} is defined twice")
                setattr(self, query.__name__, query)

    def __getattr__(self, name: str) -> Query:  # for type checkers: attributes are set above
        raise AttributeError(f"no query named {name} in sql/")


def _parse(path: Path) -> list[Query]:
    queries = []
    blocks = re.split(r"^(?=--\s*name:)", path.read_text(), flags=re.MULTILINE)
    for block in blocks[1:]:  # the first is the file's own comment
        header, *lines = block.strip().splitlines()
        match = _HEADER.match(header)
        if match is None:
            raise ValueError(f"{path}: cannot read {header!r}")
        doc = " ".join(line.lstrip("- ").strip() for line in lines if line.startswith("--"))
        sql = "\n".join(line for line in lines if not line.startswith("--")).strip().rstrip(";")
        params = [param.strip() for param in match["params"].split(",") if param.strip()]
        queries.append(Query(match["name"], doc, sql, params, match["returns"], str(path)))
    return queries
