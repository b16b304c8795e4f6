"""Change capture from the source's binlog (`"capture": "binlog"`): positions and row events.

A binlog table starts from a **snapshot**: the position of a `START TRANSACTION WITH CONSISTENT
SNAPSHOT` (MariaDB's `binlog_snapshot_file` / `binlog_snapshot_position`: every transaction
before it is visible to that snapshot, none after it), then the table copied by the ordinary
full-refresh path (built aside, swapped in). That copy is read a moment after the snapshot
position, so it may already hold some changes after it; applying the events from the position
on brings those rows to the same values again, because applying is idempotent (below).

**Applying** (`ChangeReader`): the row events of the table, in commit order, from the stored
position to the end of the binlog, grouped into batches that end on a transaction boundary (an
XID, a `COMMIT`, or a DDL statement). Each event is used for its **key** only: a batch is the set
of keys its events touched and, per key, whether the last event left the row in the source
(insert, update: the row is copied from the source by key, the sync's own exact extraction) or
took it away (delete, or the old key of an update that changed the key: the target row is
deleted). The values are therefore never decoded from the binlog, and every type keeps the
fidelity of the ordinary path (python-mysql-replication has known gaps: spatial values, JSON
partial updates, BINARY padding, the charset of a column it cannot see). A batch's rows, its
deletes and the new position are committed to the target before the next batch starts; a crash
re-applies at most the batch under way, and applying a batch twice gives the same rows, so no
change is skipped and none takes effect twice. A row copied by key holds the source's value at
the time of the copy, never an older one; a change after that is a later event, applied next.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from mysqlsync_dagster.errors import BinlogPurged, SchemaError
from mysqlsync_dagster.settings import BINLOG_SERVER_ID, BINLOG_SERVER_ID_SPAN, DatabaseSettings

POSITION_PREFIX = "binlog:"
BATCH_KEYS = 10_000  # keys per applied batch (at most `batch_size`), ended at a transaction end
ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236


@dataclass(frozen=True, order=True)
class Position:
    """A place in the source's binlog: the file and the offset of the next event to read."""

    file: str
    offset: int

    def __str__(self) -> str:
        """The form stored as the table's cursor in the state table."""
        return f"{POSITION_PREFIX}{self.file}:{self.offset}"

    @classmethod
    def parse(cls, text: str | None) -> Position | None:
        """A stored cursor (`binlog:file:offset`), or None for anything else (a modifier
        cursor of the table's earlier configuration, or nothing stored)."""
        if not text or not text.startswith(POSITION_PREFIX):
            return None
        file, _, offset = text.removeprefix(POSITION_PREFIX).rpartition(":")
        if not file or not offset.isdigit():
            return None
        return cls(file, int(offset))


# -- the source's binlog --------------------------------------------------------------------
def _variables(conn: sa.Connection, statement: str) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in conn.execute(sa.text(statement)).all()}


def binlog_variables(conn: sa.Connection) -> dict[str, str]:
    """The source's settings that change capture depends on (doctor checks them)."""
    return _variables(
        conn,
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format',"
        " 'binlog_row_image', 'binlog_row_metadata', 'server_id', 'expire_logs_days',"
        " 'binlog_expire_logs_seconds', 'version', 'log_bin_compress')",
    )


def snapshot_position(conn: sa.Connection) -> Position:
    """The binlog position of a consistent snapshot taken now (MariaDB): every transaction
    written before it is visible to a read that starts after this call."""
    conn.execute(sa.text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
    try:
        status = _variables(conn, "SHOW SESSION STATUS LIKE 'binlog_snapshot_%'")
    finally:
        conn.execute(sa.text("COMMIT"))
    file, offset = status.get("binlog_snapshot_file"), status.get("binlog_snapshot_position")
    if not file or offset is None:
        version = conn.execute(sa.text("SELECT VERSION()")).scalar()
        if "mariadb" not in str(version).lower():
            raise SchemaError(
                f"capture 'binlog' needs MariaDB's consistent-snapshot binlog position "
                f"(binlog_snapshot_file); the source is MySQL {version}, which this version "
                "does not support: use capture 'modifier' for its tables"
            )
        raise SchemaError(
            "the source writes no binlog (log_bin is OFF): capture 'binlog' needs "
            "log_bin, binlog_format=ROW and binlog_row_image=FULL (run `mysqlsync-dagster doctor`)"
        )
    return Position(file, int(offset))


COMPRESSED_FIX = (
    "MariaDB's compressed binlog events (log_bin_compress=ON) cannot be read: rows in them "
    "would be missed. SET GLOBAL log_bin_compress = OFF (and log_bin_compress=OFF in the "
    "server's config)"
)
# The row settings the reader needs: every row in full, with its column names and signedness.
ROW_SETTINGS = {"binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}


def setting_problems(variables: dict[str, str]) -> dict[str, str | None]:
    """For each setting the reader depends on (`ROW_SETTINGS`, then `log_bin_compress`), what
    is wrong with the source's value and how to fix it (None: right). Shared by the run's
    check before reading and doctor."""
    problems: dict[str, str | None] = {}
    for variable, wanted in ROW_SETTINGS.items():
        value = variables.get(variable, "").upper()
        problems[variable] = (
            None
            if value == wanted
            else f"{variable} is {value or 'not available'}, capture 'binlog' needs {wanted}: "
            f"SET GLOBAL {variable} = '{wanted}' (and {variable}={wanted} in the server's "
            "config)"
        )
    compressed = variables.get("log_bin_compress", "OFF").upper() in ("ON", "1")
    problems["log_bin_compress"] = COMPRESSED_FIX if compressed else None
    return problems


def check_readable(conn: sa.Connection, table: str) -> None:
    """Fail before reading when the source writes row events the reader would skip unseen:
    python-mysql-replication knows no compressed row events, nor rows without full images
    or column names."""
    for problem in setting_problems(binlog_variables(conn)).values():
        if problem is not None:
            raise SchemaError(f"table {table!r}: {problem}")


def binlog_files(conn: sa.Connection) -> list[str]:
    """The binlog files the source still has, oldest first."""
    return [str(row[0]) for row in conn.execute(sa.text("SHOW BINARY LOGS")).all()]


def end_position(conn: sa.Connection) -> Position:
    """Where the source's binlog ends now."""
    row = conn.execute(sa.text("SHOW MASTER STATUS")).first()
    if row is None:
        raise SchemaError("the source writes no binlog (log_bin is OFF)")
    return Position(str(row[0]), int(row[1]))


def check_available(conn: sa.Connection, table: str, position: Position) -> None:
    """Fail with the fix when the binlog file holding `position` has been purged."""
    files = binlog_files(conn)
    if position.file not in files:
        oldest = files[0] if files else "none"
        raise BinlogPurged(
            f"table {table!r}: the source no longer has binlog file {position.file!r}, where "
            f"this table's sync stands ({position}; oldest file kept: {oldest}): changes were "
            "lost to this reader. Re-snapshot the table: set BINLOG_RESNAPSHOT=true (the next "
            "run copies the table anew), and keep the binlog longer than the sync interval "
            "(binlog_expire_logs_seconds)"
        )


def reader_server_id(base: int = BINLOG_SERVER_ID) -> int:
    """This process's replica server id: `BINLOG_SERVER_ID` + an offset from the pid, so that
    two readers (two runs, a run and the sensor) do not share one."""
    return base + os.getpid() % BINLOG_SERVER_ID_SPAN


def connection_settings(source: DatabaseSettings) -> dict[str, Any]:
    """PyMySQL connection arguments for the replication stream: the source's own."""
    url = source.url
    settings: dict[str, Any] = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 3306,
        "user": url.username or "",
        "password": url.password or "",
        "connect_timeout": source.connect_timeout,
        "charset": "utf8mb4",
    }
    if source.ssl is not None:
        settings["ssl"] = source.ssl
    return settings


# -- row events ----------------------------------------------------------------------------
Key = tuple[Any, ...]


@dataclass
class Batch:
    """The changes of whole transactions, reduced to keys, and the position after them."""

    end: Position
    upserts: dict[Key, None] = field(default_factory=dict)  # ordered set: copy from the source
    deletes: set[Key] = field(default_factory=set)  # delete in the target
    events: int = 0  # row events (one per changed row)
    transactions: int = 0
    newest_event_time: int | None = None  # UNIX time of the newest change's commit
    ddl: str | None = None  # a statement on the table that ends this batch (applied after it)
    ddl_kind: str | None = None  # "alter", "truncate", "rename", "drop", "create"

    @property
    def changed(self) -> bool:
        return bool(self.upserts or self.deletes)

    def touch(self, key: Key, *, present: bool) -> None:
        """The last event for `key` so far left the row in the source (`present`) or not."""
        if present:
            self.deletes.discard(key)
            self.upserts[key] = None
        else:
            self.upserts.pop(key, None)
            self.deletes.add(key)


_DDL = re.compile(r"^\s*(alter|truncate|rename|drop)\b", re.IGNORECASE)
_IDENT = r"(?:`((?:[^`]|``)+)`|([A-Za-z0-9_$]+))"
_QUALIFIED = re.compile(_IDENT + r"(?:\s*\.\s*" + _IDENT + ")?")
_COMMENT = re.compile(r"/\*.*?\*/|--[^\n]*|#[^\n]*", re.DOTALL)


def ddl_kind(statement: str, database: str, table: str, default_schema: str) -> str | None:
    """ "alter", "truncate", "rename" or "drop" when `statement` is such DDL and names
    `database`.`table` (or `table` alone, with `default_schema` being `database`); None for
    anything else. A statement that merely mentions the table (a foreign key to it) counts:
    the schema is then read again, which changes nothing."""
    text = _COMMENT.sub(" ", statement)
    match = _DDL.match(text)
    if match is None:
        return None
    for name in _QUALIFIED.finditer(text):
        first = (name.group(1) or "").replace("``", "`") or name.group(2)
        second = (name.group(3) or "").replace("``", "`") or name.group(4)
        schema, bare = (first, second) if second else (default_schema, first)
        if bare.casefold() == table.casefold() and schema.casefold() == database.casefold():
            return match.group(1).lower()
    return None


def open_stream(
    connection: dict[str, Any],
    server_id: int,
    start: Position,
    database: str,
    tables: Sequence[str],
    events: Sequence[type],
) -> Any:
    """A non-blocking replication stream of `events` of `tables` from `start` (it ends at the
    end of the binlog as the server has it then)."""
    from pymysqlreplication import BinLogStreamReader

    return BinLogStreamReader(
        connection_settings=dict(connection),
        server_id=server_id,
        resume_stream=True,
        blocking=False,
        log_file=start.file,
        log_pos=start.offset,
        only_events=list(events),
        only_schemas=[database],
        only_tables=list(tables),
        # a table map is parsed once per table id (40% of the reader's time when every
        # transaction is one row, measured): the server gives a table a new id when its
        # definition changes, and `ChangeReader.batches` forgets them all after DDL on it
        freeze_schema=True,
        enable_logging=False,
    )


class ChangeReader:
    """The row events of one source table from `start` to the end of the binlog (as it is
    when the reader reaches it), as `Batch`es of at most `batch_keys` keys that end on
    transaction boundaries; a DDL statement on the table ends a batch of its own."""

    def __init__(
        self,
        connection: dict[str, Any],
        database: str,
        table: str,
        primary_key: Sequence[str],
        start: Position,
        *,
        batch_keys: int,
        server_id: int,
        apply_deletes: bool = True,
        key_lengths: Sequence[int | None] = (),
    ) -> None:
        self.connection = connection
        self.database = database
        self.table = table
        self.primary_key = tuple(primary_key)
        self.start = start
        self.batch_keys = batch_keys
        self.server_id = server_id
        self.apply_deletes = apply_deletes
        # BINARY(n) key columns: the binlog drops their trailing zero bytes; padded back
        self.key_lengths = tuple(key_lengths) or (None,) * len(self.primary_key)

    def _stream(self) -> Any:
        from pymysqlreplication.event import QueryEvent, RotateEvent, XidEvent
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        events = [WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent]
        return open_stream(
            self.connection,
            self.server_id,
            self.start,
            self.database,
            [self.table],
            [*events, RotateEvent],
        )

    def _key(self, values: dict[str, Any]) -> Key:
        return self._padded(tuple(values[column] for column in self.primary_key))

    def batches(self) -> Iterator[Batch]:
        """Read to the end of the binlog; the last batch (possibly empty) ends there."""
        from pymysqlreplication.event import QueryEvent, RotateEvent, XidEvent
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        stream = self._stream()
        batch = Batch(self.start)
        file = self.start.file
        in_transaction = False
        try:
            for event in _events(stream, self.table):
                if isinstance(event, RotateEvent):
                    file = event.next_binlog
                    continue
                position = Position(file, stream.log_pos)
                if isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                    in_transaction = True
                    self._collect(batch, event)
                    continue
                if isinstance(event, XidEvent) or (
                    isinstance(event, QueryEvent) and event.query.strip().upper() == "COMMIT"
                ):
                    in_transaction = False
                    if batch.events:
                        batch.transactions += 1
                    batch.end = position
                    if len(batch.upserts) + len(batch.deletes) >= self.batch_keys:
                        yield batch
                        batch = Batch(position)
                    continue
                if isinstance(event, QueryEvent):
                    query = event.query.strip()
                    if query.upper() == "BEGIN":
                        continue
                    default = event.schema.decode("utf-8", "replace") if event.schema else ""
                    kind = ddl_kind(query, self.database, self.table, default)
                    if kind is None:  # DDL of another table: a boundary all the same
                        if not in_transaction:
                            batch.end = position
                        continue
                    stream.table_map.clear()
                    if batch.changed:
                        yield batch
                    yield Batch(position, ddl=query, ddl_kind=kind)
                    batch = Batch(position)
        finally:
            stream.close()
        yield batch

    def _collect(self, batch: Batch, event: Any) -> None:
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent

        batch.newest_event_time = event.timestamp
        for before, after in self._row_keys(event):
            batch.events += 1
            if isinstance(event, UpdateRowsEvent):
                if before != after and self.apply_deletes:
                    batch.touch(before, present=False)
                batch.touch(after, present=True)
            elif isinstance(event, DeleteRowsEvent):
                if self.apply_deletes:
                    batch.touch(before, present=False)
            else:
                batch.touch(before, present=True)

    def _row_keys(self, event: Any) -> Iterator[tuple[Key, Key | None]]:
        """(key, key after) of each row of a row event (key after: updates only). The key
        columns are decoded by the library; the other columns are skipped by their sizes
        (`KeyDecoder`), unless a column's type is one it does not size: then the library
        decodes whole rows (three quarters of the reader's time, measured)."""
        from pymysqlreplication.row_event import UpdateRowsEvent

        update = isinstance(event, UpdateRowsEvent)
        decoder = KeyDecoder.of(event, self.primary_key)
        if decoder is None:
            for row in event.rows:
                if update:
                    yield self._key(row["before_values"]), self._key(row["after_values"])
                else:
                    yield self._key(row["values"]), None
            return
        if not event.complete:
            return
        packet = event.packet
        while packet.read_bytes < event.event_size:
            before = self._padded(decoder.key(event, event.columns_present_bitmap))
            after = None
            if update:
                after = self._padded(decoder.key(event, event.columns_present_bitmap2))
            yield before, after

    def _padded(self, key: Key) -> Key:
        return tuple(
            value.ljust(length, b"\0")
            if length is not None and isinstance(value, bytes) and len(value) < length
            else value
            for value, length in zip(key, self.key_lengths, strict=True)
        )


# A sensor tick scans at most this much binlog for the tables it watches; beyond it (a sensor
# stopped for long, a burst), it requests a run of every binlog table without looking.
SCAN_LIMIT_BYTES = 64 * 1024 * 1024


def tables_changed(
    connection: dict[str, Any],
    database: str,
    tables: Sequence[str],
    start: Position,
    end: Position,
    *,
    server_id: int,
) -> set[str]:
    """Which of `tables` have row events or DDL between `start` and `end` (the sensor's
    scan; `end` the source's end of binlog, read before)."""
    from pymysqlreplication.event import QueryEvent
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    events = [WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, QueryEvent]
    stream = open_stream(connection, server_id, start, database, tables, events)
    changed: set[str] = set()
    try:
        for event in _events(stream, ", ".join(tables)):
            if isinstance(event, QueryEvent):
                default = event.schema.decode("utf-8", "replace") if event.schema else ""
                changed.update(
                    t for t in tables if ddl_kind(event.query, database, t, default) is not None
                )
            else:
                changed.add(event.table)
            if Position(stream.log_file, stream.log_pos) >= end or changed >= set(tables):
                break
    finally:
        stream.close()
    return changed


# -- keys without decoding whole rows -------------------------------------------------------
_DECIMAL_BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def _decimal_size(precision: int, scale: int) -> int:
    """Bytes of a DECIMAL(precision, scale) in MySQL's binary format (9 digits per 4 bytes)."""
    whole = precision - scale
    return whole // 9 * 4 + _DECIMAL_BYTES[whole % 9] + scale // 9 * 4 + _DECIMAL_BYTES[scale % 9]


class KeyDecoder:
    """Reads a row image's key columns (decoded by the library) and skips the others by their
    sizes in the row format. Built per table map (cached on its `Table` object); None when a
    column's type is not one it sizes, so that the library decodes those rows whole."""

    def __init__(self, skips: list[Any], keys: dict[int, int]) -> None:
        self.skips = skips  # per column: a byte count, or ("prefix", n): a length of n bytes
        self.keys = keys  # column index -> place in the key
        self._shown: dict[bytes, list[int]] = {}  # a present-columns bitmap -> their indexes

    @classmethod
    def of(cls, event: Any, primary_key: Sequence[str]) -> KeyDecoder | None:
        table = event.table_map[event.table_id]
        cached = getattr(table, "_mysqlsync_keys", False)
        if cached is not False:
            return cached
        names = [column.name for column in event.columns]
        decoder = None
        if all(name in names for name in primary_key):
            skips = [_skip(column) for column in event.columns]
            if all(skip is not None for skip in skips):
                keys = {names.index(name): place for place, name in enumerate(primary_key)}
                decoder = cls(skips, keys)
        table._mysqlsync_keys = decoder
        return decoder

    def key(self, event: Any, present: bytes) -> Key:
        packet = event.packet
        columns = event.columns
        shown = self._shown.get(present)
        if shown is None:
            shown = [i for i in range(len(columns)) if present[i >> 3] & (1 << (i & 7))]
            self._shown[bytes(present)] = shown
        nulls = packet.read((len(shown) + 7) >> 3)
        key: list[Any] = [None] * len(self.keys)
        read_value = event._RowsEvent__read_values_name  # the library's own decoding
        for null_index, i in enumerate(shown):
            if nulls[null_index >> 3] & (1 << (null_index & 7)):
                continue
            place = self.keys.get(i)
            if place is not None:
                column = columns[i]
                key[place] = read_value(
                    column, nulls, null_index, False, present, column.unsigned, i
                )
                continue
            skip = self.skips[i]
            if isinstance(skip, int):
                packet.advance(skip)
            else:
                packet.advance(packet.read_uint_by_size(skip[1]))
        return tuple(key)


def _skip(column: Any) -> Any:
    """How a value of `column` is laid out in a row image (see `KeyDecoder`), or None."""
    from pymysqlreplication.constants import FIELD_TYPE as T

    fixed = {
        T.TINY: 1, T.SHORT: 2, T.INT24: 3, T.LONG: 4, T.LONGLONG: 8, T.FLOAT: 4, T.DOUBLE: 8,
        T.YEAR: 1, T.DATE: 3, T.NEWDATE: 3, T.TIME: 3, T.DATETIME: 8, T.TIMESTAMP: 4,
    }  # fmt: skip
    kind = column.type
    if kind in fixed:
        return fixed[kind]
    if kind in (T.TIMESTAMP2, T.DATETIME2, T.TIME2):
        base = {T.TIMESTAMP2: 4, T.DATETIME2: 5, T.TIME2: 3}[kind]
        return base + (column.fsp + 1) // 2
    if kind == T.NEWDECIMAL:
        return _decimal_size(column.precision, column.decimals)
    if kind in (T.VARCHAR, T.STRING):
        return ("prefix", 2 if column.max_length > 255 else 1)
    if kind in (T.BLOB, T.GEOMETRY, T.JSON):
        return ("prefix", column.length_size)
    if kind in (T.ENUM, T.SET):
        return column.size
    if kind == T.BIT:
        return column.bytes
    return None


def _events(stream: Any, table: str) -> Iterator[Any]:
    """The stream's events; a purged or unreadable binlog becomes a clear error."""
    import pymysql

    while True:
        try:
            event = stream.fetchone()
        except pymysql.err.OperationalError as error:
            code = error.args[0] if error.args else None
            if code == ER_MASTER_FATAL_ERROR_READING_BINLOG:
                raise BinlogPurged(
                    f"table {table!r}: the source cannot send its binlog from the stored "
                    f"position: {error.args[1] if len(error.args) > 1 else error}. Set "
                    "BINLOG_RESNAPSHOT=true to copy the table anew"
                ) from None
            raise
        if event is None:
            return
        yield event


@dataclass
class CaptureStats:
    """What a run's change capture applied (`SyncReport` takes these)."""

    events: int = 0
    transactions: int = 0
    batches: int = 0
    rows_upserted: int = 0
    rows_deleted: int = 0
    position_before: str | None = None
    position_after: str | None = None
    lag_seconds: float | None = None  # commit of the newest applied change -> its apply
    seconds: float = 0.0

    def applied(self, batch: Batch, upserted: int, deleted: int) -> None:
        self.batches += 1
        self.events += batch.events
        self.transactions += batch.transactions
        self.rows_upserted += upserted
        self.rows_deleted += deleted
        self.position_after = str(batch.end)
        if batch.newest_event_time:
            self.lag_seconds = max(0.0, time.time() - batch.newest_event_time)


def key_lengths(column_types: Sequence[str]) -> list[int | None]:
    """The declared length of each BINARY(n) key column (None for any other type)."""
    out: list[int | None] = []
    for column_type in column_types:
        match = re.fullmatch(r"binary\((\d+)\)", column_type.strip().lower())
        out.append(int(match.group(1)) if match else None)
    return out


# The reader's decoding logs a warning per table map event without full row metadata; doctor
# reports that setting once instead.
logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)
