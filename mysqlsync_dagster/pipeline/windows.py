"""Windows over a table's modifier column and the WHERE clause that selects a window's rows.

Pure logic (no Dagster): a partition run, a backfill range and a partitioned input all become a
`ModifierWindow`, and every reader of the rows (the extraction, the checks, the input manager)
selects them with `window_condition`. Naive DATETIME/DATE modifiers are compared against the
bounds written as wall-clock text in `SOURCE_TIMEZONE` (verbatim, never shifted); TIMESTAMP
modifiers as instants (sessions run in UTC, see db.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from mysqlsync_dagster.catalog import NUMERIC_TYPES, WINDOW_TYPES


class epoch_instant(FunctionElement[Any]):
    """The instant `epoch` seconds after 1970-01-01 UTC: FROM_UNIXTIME in MySQL sessions (which
    run in UTC, see db.py), to_timestamp in PostgreSQL (a target's copy of a TIMESTAMP column
    is a timestamptz)."""

    inherit_cache = True
    name = "epoch_instant"


@compiles(epoch_instant)
def _mysql_epoch_instant(element: epoch_instant, compiler: Any, **kw: Any) -> str:
    return f"FROM_UNIXTIME({compiler.process(element.clauses, **kw)})"


@compiles(epoch_instant, "postgresql")
@compiles(epoch_instant, "duckdb")
def _postgres_epoch_instant(element: epoch_instant, compiler: Any, **kw: Any) -> str:
    return f"to_timestamp({compiler.process(element.clauses, **kw)})"


@dataclass(frozen=True)
class ModifierWindow:
    """Rows with `start <= modifier < end`; an open bound (None) is unbounded on that side.

    `include_null` adds rows whose modifier is NULL (the first partition takes them).
    """

    start: dt.datetime | None
    end: dt.datetime | None
    include_null: bool = False

    def describe(self) -> str:
        start = self.start.isoformat() if self.start else "the beginning"
        end = self.end.isoformat() if self.end else "the future"
        return f"[{start}, {end})" + (" and NULL" if self.include_null else "")


ALL_PARTITIONS = ModifierWindow(start=None, end=None, include_null=True)


def _bound(value: dt.datetime, data_type: str) -> sa.ColumnElement[Any]:
    if data_type == "timestamp":  # an instant; the session time zone is UTC (see db.py)
        epoch = Decimal(str(value.timestamp()))
        return epoch_instant(sa.literal(epoch, sa.Numeric(30, 6)))
    # naive DATETIME/DATE values are wall-clock time in SOURCE_TIMEZONE: compare as text
    return sa.literal(value.replace(tzinfo=None).isoformat(sep=" "), sa.String)


def window_condition(
    column: sa.ColumnElement[Any], data_type: str, window: ModifierWindow
) -> sa.ColumnElement[bool]:
    """WHERE clause selecting the rows of `window` (values bound as parameters)."""
    if data_type not in WINDOW_TYPES:
        raise ValueError(
            f"a time window needs a DATE, DATETIME or TIMESTAMP column, not {data_type}"
        )
    bounds = []
    if window.start is not None:
        bounds.append(column >= _bound(window.start, data_type))
    if window.end is not None:
        bounds.append(column < _bound(window.end, data_type))
    condition: sa.ColumnElement[bool] = sa.and_(sa.true(), *bounds)
    if window.include_null:
        condition = sa.or_(condition, column.is_(None))
    return condition


def cursor_literal(data_type: str, cursor: str) -> sa.ColumnElement[Any]:
    """The stored cursor text as a value comparable with a modifier column of `data_type`."""
    if data_type == "timestamp":
        return epoch_instant(sa.literal(Decimal(cursor), sa.Numeric(30, 6)))
    if data_type == "decimal":
        return sa.literal(Decimal(cursor), sa.Numeric(65, 30))
    if data_type in NUMERIC_TYPES:
        return sa.literal(int(cursor), sa.BigInteger)
    return sa.literal(cursor, sa.String)


def cursor_text(data_type: str | None, cursor: object) -> str:
    """A stored cursor (or a probed maximum) as people read it: a TIMESTAMP's epoch seconds as
    its UTC time (`1140017053` -> `2006-02-15 15:24:13 UTC`), anything else as it is."""
    if data_type != "timestamp" or cursor in (None, ""):
        return str(cursor)
    try:
        moment = dt.datetime.fromtimestamp(float(Decimal(str(cursor))), dt.UTC)
    except (ArithmeticError, ValueError, OverflowError):
        return str(cursor)
    text = moment.isoformat(sep=" ").removesuffix("+00:00")
    return f"{text} UTC"


def changed_since(
    column: sa.ColumnElement[Any], data_type: str, cursor: str
) -> sa.ColumnElement[bool]:
    """The incremental read: rows whose modifier is at or after `cursor`, and rows whose
    modifier is NULL (never stamped: re-read each run, through the modifier's index)."""
    return sa.or_(column >= cursor_literal(data_type, cursor), column.is_(None))


def earliest_cursor(
    data_type: str, cursor: str | None, moment: dt.datetime, timezone: str
) -> str | None:
    """`cursor`, or the cursor form of `moment` (an aware instant) when that is earlier: the
    start of the oldest transaction still open on the source, whose rows may commit later
    with a modifier from before the cursor. Counters and DATE modifiers are left as they are."""
    if cursor is None or data_type not in ("timestamp", "datetime"):
        return cursor
    try:
        if data_type == "timestamp":
            bound = Decimal(str(moment.timestamp())).quantize(Decimal("0.000001"))
            return str(bound) if bound < Decimal(cursor) else cursor
        local = moment.astimezone(ZoneInfo(timezone)).replace(tzinfo=None)
        return local.isoformat(sep=" ") if local < dt.datetime.fromisoformat(cursor) else cursor
    except ValueError:
        return cursor
