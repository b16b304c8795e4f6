"""The catalog: what a MySQL/MariaDB server says about a table, read once and passed on.

A table's shape (columns with their exact types, primary key, `SHOW CREATE TABLE`) for the
sync and the checks; batched facts about many tables at once (columns, indexes, row and size
estimates) for doctor and the sync's preflight; and the preflight rules themselves, written
once: the sync raises on a failed rule, doctor reports it as a finding.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.db import quote_identifier as quote
from mysqlsync_dagster.db import run_sql

LOAD_ID_COLUMN = "_dlt_load_id"
DLT_ID_COLUMN = "_dlt_id"
DLT_COLUMNS = (LOAD_ID_COLUMN, DLT_ID_COLUMN)

BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
SPATIAL_TYPES = frozenset(
    {
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
    }
)
DATE_TYPES = frozenset({"date", "datetime"})
# Character types: their values are utf8mb4 (or another charset's) text.
TEXT_TYPES = frozenset(
    {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}
)
INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})
NUMERIC_TYPES = INTEGER_TYPES | {"decimal", "year"}
# Types a modifier column may have: they order changes in time (or by version number).
ORDERABLE_TYPES = NUMERIC_TYPES | {"date", "datetime", "timestamp"}
# Types a partitioned table's modifier may have: time windows are laid over them.
WINDOW_TYPES = frozenset({"date", "datetime", "timestamp"})
# Types that can hold a zero date ('0000-00-00', a zero month or day), which the copy turns
# into NULL (pipeline/wire.py). A NOT NULL one is made nullable in the target by the run that
# copies its first zero date (the loaders' `allow_nulls`), and stays so (`keeps_nulls`).
ZERO_DATE_TYPES = frozenset({"date", "datetime", "timestamp"})


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # e.g. "bigint"
    column_type: str  # e.g. "bigint(20) unsigned"
    nullable: bool
    charset: str | None
    collation: str | None
    generated: bool
    default: str | None = None

    @property
    def signature(self) -> tuple[object, ...]:
        """What must match for the target column to hold the same values as the source."""
        return (
            self.column_type.lower(),
            self.nullable,
            self.charset,
            self.collation,
            self.generated,
        )


def keeps_nulls(source: Column, target_nullable: bool) -> bool:
    """The target's column was made nullable for zero dates (`ZERO_DATE_TYPES`): the source's
    NOT NULL is not put back (its NULLs stand for zero dates)."""
    return target_nullable and not source.nullable and source.data_type in ZERO_DATE_TYPES


@dataclass(frozen=True)
class TableShape:
    """A table as the server describes it."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    create_sql: str
    column_definitions: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def copied_columns(self) -> list[Column]:
        """Columns whose values are copied (generated columns are computed by the target)."""
        return [c for c in self.columns if not c.generated and c.name not in DLT_COLUMNS]


def qualified(database: str, table: str) -> str:
    return f"{quote(database)}.{quote(table)}"


_COLUMN_FIELDS = (
    "COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, COLLATION_NAME,"
    " EXTRA, COLUMN_DEFAULT"
)


def _column(row: Sequence[Any]) -> Column:
    """A `Column` from the `_COLUMN_FIELDS` of information_schema.COLUMNS."""
    return Column(
        name=row[0],
        data_type=row[1].lower(),
        column_type=row[2],
        nullable=row[3] == "YES",
        charset=row[4],
        collation=row[5],
        generated="GENERATED" in (row[6] or "").upper(),
        default=row[7],
    )


def read_table_shape(conn: Connection, database: str, table: str) -> TableShape | None:
    """The table's columns, primary key and DDL; None when it does not exist."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_COLUMN_FIELDS} FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = :db AND TABLE_NAME = :t ORDER BY ORDINAL_POSITION"
        ),
        {"db": database, "t": table},
    ).all()
    if not rows:
        return None
    columns = tuple(_column(r) for r in rows)
    primary_key = tuple(
        r[0]
        for r in conn.execute(
            sa.text(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS"
                " WHERE TABLE_SCHEMA = :db AND TABLE_NAME = :t AND INDEX_NAME = 'PRIMARY'"
                " ORDER BY SEQ_IN_INDEX"
            ),
            {"db": database, "t": table},
        )
    )
    create_sql = run_sql(conn, f"SHOW CREATE TABLE {qualified(database, table)}").one()[1]
    definitions, _ = split_create_table(create_sql)
    return TableShape(table, columns, primary_key, create_sql, definitions)


def key_violations(
    conn: Connection, database: str, table: str, columns: Sequence[str]
) -> tuple[list[tuple[object, ...]], int]:
    """Up to 3 key values that occur more than once, and how many rows have a NULL key part."""
    key = ", ".join(quote(c) for c in columns)
    source = qualified(database, table)
    duplicates = run_sql(
        conn,
        f"SELECT {key}, COUNT(*) FROM {source} GROUP BY {key} HAVING COUNT(*) > 1 LIMIT 3",
    ).all()
    nulls = run_sql(
        conn,
        f"SELECT COUNT(*) FROM {source} WHERE "
        + " OR ".join(f"{quote(c)} IS NULL" for c in columns),
    ).scalar_one()
    return [tuple(r) for r in duplicates], int(nulls)


def _parse_identifier(line: str, start: int) -> tuple[str, int]:
    """Parse a backtick-quoted identifier starting at line[start] == '`'."""
    out = []
    i = start + 1
    while i < len(line):
        ch = line[i]
        if ch == "`":
            if i + 1 < len(line) and line[i + 1] == "`":
                out.append("`")
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise ValueError(f"unterminated identifier in {line!r}")


def split_create_table(create_sql: str) -> tuple[dict[str, str], list[str]]:
    """Split SHOW CREATE TABLE into column definitions (by name) and the other body lines."""
    lines = create_sql.split("\n")
    columns: dict[str, str] = {}
    others: list[str] = []
    for line in lines[1:]:
        if line.startswith(")"):
            break
        item = line.strip().rstrip(",")
        if item.startswith("`"):
            name, _ = _parse_identifier(item, 0)
            columns[name] = item
        else:
            others.append(item)
    return columns, others


def modifier_maximum(column: sa.ColumnElement[Any], data_type: str) -> sa.ColumnElement[Any]:
    """`MAX(modifier)` as the text the sync stores as its cursor (epoch seconds for a
    TIMESTAMP, whose text would depend on the session's time zone)."""
    latest: sa.ColumnElement[Any] = sa.func.max(column)
    if data_type == "timestamp":
        latest = sa.func.unix_timestamp(latest)
    return sa.cast(latest, sa.CHAR)


# -- many tables at once: facts for the preflight rules -------------------------------------
Status = Literal["ok", "warn", "fail"]
_RANK: dict[Status, int] = {"ok": 0, "warn": 1, "fail": 2}

# A table at or above either figure is better served by mode "staging" (extraction to Parquet
# on disk, then a separate load): a failed load is retried from the files instead of re-reading
# the source, and the source connection is held only for the extraction.
STAGING_MIN_ROWS = 5_000_000
STAGING_MIN_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Finding:
    """One verdict: where (`scope`: config, source, target or a table), what, and the outcome.

    `advice` marks findings about how well a table is served (an index, the mode) rather than
    whether it can be synced: doctor reports them, a sync does not repeat them every run."""

    scope: str
    check: str
    status: Status
    message: str
    advice: bool = field(default=False, compare=False)

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "advice"}


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=_RANK.__getitem__, default="ok")


def exit_code(findings: Iterable[Finding]) -> int:
    return _RANK[worst(f.status for f in findings)]


@dataclass
class TableFacts:
    """A source table as information_schema describes it (`exists` False: it is missing)."""

    exists: bool
    table_type: str = "BASE TABLE"
    columns: dict[str, str] = field(default_factory=dict)  # name -> DATA_TYPE
    # index name -> (unique, columns in order)
    indexes: dict[str, tuple[bool, tuple[str, ...]]] = field(default_factory=dict)
    rows: int | None = None
    bytes: int | None = None
    avg_row_length: int | None = None
    name_hint: str | None = None  # the same name in another letter case, if that exists
    details: tuple[Column, ...] = ()  # the columns in full, in table order

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.indexes.get("PRIMARY", (True, ()))[1]

    def unique_index_on(self, columns: Sequence[str]) -> str | None:
        """The name of a unique index on exactly `columns` (in any order), if there is one."""
        return next(
            (
                name
                for name, (unique, cols) in self.indexes.items()
                if unique and set(cols) == set(columns)
            ),
            None,
        )


def recommend_mode(rows: int | None, size: int | None) -> str:
    """ "staging" at or above STAGING_MIN_ROWS rows or STAGING_MIN_BYTES bytes, else "direct"."""
    if (rows or 0) >= STAGING_MIN_ROWS or (size or 0) >= STAGING_MIN_BYTES:
        return "staging"
    return "direct"


def read_table_facts(
    conn: Connection, database: str, tables: Sequence[str]
) -> dict[str, TableFacts]:
    """Facts for every named table in three queries, however many tables there are."""
    if not tables:
        return {}
    wanted = {t.casefold() for t in tables}
    params = {"db": database}
    # Filtering by schema only: information_schema compares names case-insensitively, the
    # exact match (and the "did you mean" hint) is decided here.
    info = conn.execute(
        sa.text(
            "SELECT TABLE_NAME, TABLE_TYPE, TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH,"
            " AVG_ROW_LENGTH FROM information_schema.TABLES WHERE TABLE_SCHEMA = :db"
        ),
        params,
    ).all()
    present = {r[0]: r for r in info if r[0].casefold() in wanted}
    names = sa.bindparam("tables", expanding=True)
    columns: dict[str, list[Column]] = defaultdict(list)
    for row in conn.execute(
        sa.text(
            f"SELECT TABLE_NAME, {_COLUMN_FIELDS} FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = :db AND TABLE_NAME IN :tables"
            " ORDER BY TABLE_NAME, ORDINAL_POSITION"
        ).bindparams(names),
        {**params, "tables": list(present) or [""]},
    ):
        columns[row[0]].append(_column(row[1:]))
    index_columns: dict[str, dict[str, tuple[bool, list[str]]]] = defaultdict(dict)
    for table, index, non_unique, column in conn.execute(
        sa.text(
            "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = :db AND TABLE_NAME IN :tables"
            " ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
        ).bindparams(names),
        {**params, "tables": list(present) or [""]},
    ):
        entry = index_columns[table].setdefault(index, (not int(non_unique), []))
        entry[1].append(column)
    facts: dict[str, TableFacts] = {}
    for table in tables:
        row = present.get(table)
        if row is None:
            hint = next((name for name in present if name.casefold() == table.casefold()), None)
            facts[table] = TableFacts(exists=False, name_hint=hint)
            continue
        details = tuple(columns.get(table, ()))
        facts[table] = TableFacts(
            exists=True,
            table_type=str(row[1]),
            columns={c.name: c.data_type for c in details},
            indexes={n: (u, tuple(c)) for n, (u, c) in index_columns.get(table, {}).items()},
            rows=None if row[2] is None else int(row[2]),
            bytes=None if row[3] is None else int(row[3]),
            avg_row_length=None if row[4] is None else int(row[4]),
            details=details,
        )
    return facts


def shape_from_facts(conn: Connection, database: str, facts: TableFacts, table: str) -> TableShape:
    """The table's shape from its facts and its `SHOW CREATE TABLE` (one more query)."""
    create_sql = run_sql(conn, f"SHOW CREATE TABLE {qualified(database, table)}").one()[1]
    definitions, _ = split_create_table(create_sql)
    return TableShape(table, facts.details, facts.primary_key, create_sql, definitions)


# -- the preflight rules -------------------------------------------------------------------
def preflight(
    cfg: TableConfig, facts: TableFacts, database: str, *, windowed: bool = False
) -> list[Finding]:
    """Can `cfg` be synced from this source table, and how well? The sync raises on the first
    `fail` (and keeps the `warn`s that are not advice as run warnings); doctor reports all."""
    scope = cfg.table
    if not facts.exists:
        hint = (
            f" (there is {facts.name_hint!r}: names are case-sensitive)" if facts.name_hint else ""
        )
        return [
            Finding(
                scope,
                "exists",
                "fail",
                f"table {cfg.table!r} does not exist in the source database {database!r}{hint}",
            )
        ]
    out: list[Finding] = []
    if facts.table_type != "BASE TABLE":
        out.append(Finding(scope, "exists", "ok", f"a {facts.table_type.lower()}"))
    out += _key_findings(cfg, facts)
    if cfg.binlog and not facts.primary_key and facts.table_type == "BASE TABLE":
        out.append(
            Finding(
                scope,
                "primary key",
                "fail",
                f"capture 'binlog' needs a PRIMARY KEY on source table {cfg.table!r}: its row "
                "events are applied by key. Add one (ALTER TABLE ... ADD PRIMARY KEY), or use "
                "capture 'modifier'",
            )
        )
    if cfg.binlog and facts.table_type != "BASE TABLE":
        out.append(
            Finding(
                scope,
                "capture",
                "fail",
                f"capture 'binlog' needs a base table; {cfg.table!r} is a "
                f"{facts.table_type.lower()}, which writes no row events of its own",
            )
        )
    if cfg.modifier is not None:
        out += _modifier_findings(cfg, facts, windowed)
    advice = recommend_mode(facts.rows, facts.bytes)
    if advice == "staging" and cfg.mode == "direct":
        out.append(
            Finding(
                scope,
                "mode",
                "warn",
                f"about {facts.rows or 0:,} rows / {human_bytes(facts.bytes)}: consider "
                '"mode": "staging"',
                advice=True,
            )
        )
    return out


def _key_findings(cfg: TableConfig, facts: TableFacts) -> list[Finding]:
    scope, key = cfg.table, list(cfg.primary_key)
    missing = [c for c in key if c not in facts.columns]
    if missing:
        return [
            Finding(
                scope,
                "primary key",
                "fail",
                f"primary key column(s) {missing} not found in the source "
                f"(columns: {list(facts.columns)})",
            )
        ]
    if facts.primary_key and set(facts.primary_key) != set(key):
        return [
            Finding(
                scope,
                "primary key",
                "fail",
                f"tables.json says primary_key {key} but the source table's primary key is "
                f"{list(facts.primary_key)}",
            )
        ]
    if facts.primary_key:
        return [Finding(scope, "primary key", "ok", f"PRIMARY KEY ({', '.join(key)})")]
    unique = facts.unique_index_on(key)
    if unique:
        return [
            Finding(
                scope,
                "primary key",
                "ok",
                f"no PRIMARY KEY; unique index {unique!r} on ({', '.join(key)})",
            )
        ]
    # The sync then checks the rows themselves (`key_violations`) before copying.
    return [
        Finding(
            scope,
            "primary key",
            "warn",
            f"the source has no primary key or unique index on ({', '.join(key)}): "
            "nothing stops duplicate keys, which fail the load",
            advice=True,
        )
    ]


def _modifier_findings(cfg: TableConfig, facts: TableFacts, windowed: bool) -> list[Finding]:
    scope, modifier = cfg.table, cfg.modifier
    assert modifier is not None
    out: list[Finding] = []
    if modifier in cfg.primary_key:
        out.append(
            Finding(
                scope,
                "modifier",
                "warn",
                f"the modifier {modifier!r} is part of the primary key: only new keys are "
                "picked up, an update that keeps its key is never re-read",
            )
        )
    data_type = facts.columns.get(modifier)
    if data_type is None:
        return [
            Finding(
                scope,
                "modifier",
                "fail",
                f"modifier column {modifier!r} not found in the source "
                f"(columns: {list(facts.columns)})",
            )
        ]
    if data_type not in ORDERABLE_TYPES:
        return [
            Finding(
                scope,
                "modifier",
                "fail",
                f"modifier column {modifier!r} has type {data_type}, which cannot order "
                "changes (use a DATETIME, TIMESTAMP, DATE or integer column)",
            )
        ]
    if windowed and data_type not in WINDOW_TYPES:
        return [
            Finding(
                scope,
                "modifier",
                "fail",
                f"partitions={cfg.partitions!r} windows over {modifier!r}, which has type "
                f"{data_type}; time windows need a DATE, DATETIME or TIMESTAMP modifier",
            )
        ]
    if any(cols and cols[0] == modifier for _, cols in facts.indexes.values()):
        out.append(Finding(scope, "modifier", "ok", f"{modifier!r} is indexed"))
    else:
        out.append(
            Finding(
                scope,
                "modifier",
                "warn",
                f"modifier {modifier!r} is not the first column of any index: every "
                f"incremental read scans the whole table (CREATE INDEX ix_{modifier} ON "
                f"{cfg.table} ({modifier}))",
                advice=True,
            )
        )
    return out


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def oldest_transaction_start(conn: Connection) -> dt.datetime | None:
    """When the oldest transaction still open on the server that has written rows began (other
    than this session's), as an aware UTC instant by the server's clock; None when there is
    none or the account may not see them (INNODB_TRX needs the PROCESS privilege). A
    transaction that has only read (an idle pooled connection) cannot commit older rows.

    INNODB_TRX reports `trx_started` in the server's own time zone, not the session's, so its
    age is measured against NOW() in that zone, then taken from the server's UTC time."""
    try:
        run_sql(conn, "SET @mysqlsync_zone = @@session.time_zone, time_zone = 'SYSTEM'")
        try:
            started = run_sql(
                conn,
                "SELECT UTC_TIMESTAMP(6) - INTERVAL TIMESTAMPDIFF(MICROSECOND, MIN(trx_started),"
                " NOW(6)) MICROSECOND FROM information_schema.INNODB_TRX"
                " WHERE trx_mysql_thread_id <> CONNECTION_ID() AND trx_rows_modified > 0",
            ).scalar()
        finally:
            run_sql(conn, "SET time_zone = @mysqlsync_zone")
    except sa.exc.DBAPIError:
        return None
    if started is None:
        return None
    if isinstance(started, str):
        started = dt.datetime.fromisoformat(started)
    return started.replace(tzinfo=dt.UTC)
