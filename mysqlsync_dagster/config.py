"""tables.json: the user's table list, validated once into typed `TableConfig` objects.

Everything downstream receives `TableConfig`, never raw dicts. Validation errors name the file,
the table (or entry number) and the key, so a bad edit is found without reading a traceback.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from mysqlsync_dagster.errors import ConfigError

DEFAULT_TABLES_CONFIG = "tables.json"
# Seconds a stored cursor stays behind the time of the read that stored it, for rows committed
# late with an older modifier (an application that stamps `updated_at` from its own clock
# before a slow commit); open transactions seen on the source are covered whatever their age
# (see pipeline/run.py).
DEFAULT_LAG_SECONDS = 30
# Rows of the rolling verification per run, beyond the rows the run synced (see verify/heal.py):
# about half a second of digests at the 1M-row benchmark's 430,000 rows/s.
DEFAULT_VERIFY_BUDGET = 250_000
MAX_IDENTIFIER_LENGTH = 64  # MySQL/MariaDB limit for table and column names

PartitionGrain = Literal["none", "hourly", "daily", "weekly", "monthly"]
Capture = Literal["modifier", "binlog"]


def _check_identifier(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise ValueError(f"{what} {value!r} is longer than {MAX_IDENTIFIER_LENGTH} characters")
    if "\x00" in value:
        raise ValueError(f"{what} {value!r} contains a NUL character")
    if value != value.rstrip(" "):
        raise ValueError(f"{what} {value!r} ends with a space, which MySQL does not allow")
    return value


Identifier = Annotated[StrictStr, Field(min_length=1)]


class TableConfig(BaseModel):
    """One entry of tables.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: Identifier
    primary_key: tuple[Identifier, ...]
    modifier: Identifier | None = None
    mode: Literal["direct", "staging"] = "direct"
    batch_size: Annotated[StrictInt, Field(gt=0, le=10_000_000)] = 50_000
    partitions: PartitionGrain = "none"
    partition_start: dt.date | None = None
    schedule: StrictStr | None = None
    freshness_minutes: Annotated[StrictInt | float, Field(gt=0)] | None = None
    detect_deletes: StrictBool = False
    checksum: StrictBool = True
    target_table: Identifier | None = None
    target_schema: Identifier | None = None  # a PostgreSQL or DuckDB target's schema
    lag_seconds: Annotated[StrictInt, Field(ge=0, le=7 * 24 * 3600)] = DEFAULT_LAG_SECONDS
    verify_budget: Annotated[StrictInt, Field(ge=0, le=1_000_000_000)] = DEFAULT_VERIFY_BUDGET
    # "binlog": a snapshot, then the source's row events (pipeline/binlog.py)
    capture: Capture = "modifier"

    @model_validator(mode="before")
    @classmethod
    def _binlog_applies_deletes(cls, data: Any) -> Any:
        """A binlog table applies deletes unless `detect_deletes` is set false (rows deleted
        in the source are then kept, as a modifier table keeps them)."""
        if isinstance(data, dict) and data.get("capture") == "binlog":
            return {"detect_deletes": True} | data
        return data

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_as_tuple(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("the primary key list is empty; name at least one column")
            return tuple(value)
        raise ValueError(
            f"expected a column name or a list of column names, got {type(value).__name__}"
        )

    @field_validator("primary_key")
    @classmethod
    def _key_columns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for column in value:
            _check_identifier(column, "primary key column")
        duplicates = sorted({c for c in value if value.count(c) > 1})
        if duplicates:
            raise ValueError(f"primary key lists {duplicates} more than once")
        return value

    @field_validator("table", "target_table", "target_schema", "modifier")
    @classmethod
    def _identifier(cls, value: str | None, info: Any) -> str | None:
        if value is not None:
            _check_identifier(value, info.field_name.replace("_", " "))
        return value

    @field_validator("partition_start", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        if value is None or isinstance(value, dt.date):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected an ISO date string like '2024-01-01', got {value!r}")
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO date like '2024-01-01'") from None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @model_validator(mode="after")
    def _partitioning(self) -> TableConfig:
        if self.partitions != "none" and self.capture == "binlog":
            raise ValueError(
                "capture 'binlog' follows the whole table from its snapshot, so it takes no "
                "'partitions' (a binlog table is backfilled by a new snapshot: drop its target "
                "table, or set BINLOG_RESNAPSHOT=true)"
            )
        if self.partitions != "none":
            if self.modifier is None:
                raise ValueError(
                    f"partitions={self.partitions!r} needs a 'modifier' column to window over"
                )
            if self.partition_start is None:
                raise ValueError(f"partitions={self.partitions!r} needs 'partition_start'")
        return self

    # -- derived names -------------------------------------------------------------------
    @property
    def target(self) -> str:
        """Name of the table in the target database."""
        return self.target_table or self.table

    @property
    def incremental(self) -> bool:
        """Follows a modifier cursor (a binlog table follows the binlog, not its modifier)."""
        return self.modifier is not None and self.capture == "modifier"

    @property
    def binlog(self) -> bool:
        return self.capture == "binlog"

    @property
    def key(self) -> str:
        """A Dagster-safe name for this table (asset key part, op and job names).

        Letters, digits and underscores are kept; anything else becomes `_` and a short hash of
        the real name is appended so that two different tables never share a key.
        """
        return dagster_safe_name(self.target)


def dagster_safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if safe != name or not safe[0].isalpha():
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:6]
        safe = f"t_{safe}_{digest}" if not safe[0].isalpha() else f"{safe}_{digest}"
    return safe


def _location(index: int, raw: Any) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("table"), str):
        return f"table {raw['table']!r}"
    return f"entry #{index + 1}"


def _format_validation_error(path: str, where: str, error: ValidationError) -> list[str]:
    messages = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"] if not isinstance(p, int)) or "(entry)"
        text = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            text = "unknown key (allowed: " + ", ".join(TableConfig.model_fields) + ")"
        elif item["type"] == "missing":
            text = "required key is missing"
        messages.append(f"{path}: {where}: key {key!r}: {text}")
    return messages


def parse_tables_config(raw: Any, path: str = DEFAULT_TABLES_CONFIG) -> list[TableConfig]:
    """Validate already-decoded JSON; raises ConfigError listing every problem found."""
    if not isinstance(raw, list):
        raise ConfigError(
            f"{path}: expected a JSON list of table objects, got {type(raw).__name__}"
        )
    problems: list[str] = []
    tables: list[TableConfig] = []
    for index, entry in enumerate(raw):
        where = _location(index, entry)
        if not isinstance(entry, dict):
            problems.append(f"{path}: {where}: expected an object, got {type(entry).__name__}")
            continue
        try:
            tables.append(TableConfig.model_validate(entry))
        except ValidationError as error:
            problems.extend(_format_validation_error(path, where, error))
    problems.extend(_duplicates(path, tables))
    if problems:
        raise ConfigError("\n".join(problems))
    return tables


def _duplicates(path: str, tables: Sequence[TableConfig]) -> list[str]:
    """Two entries may not read the same source table nor write the same target table.

    Names are compared case-folded: MySQL table names are case-insensitive on many platforms.
    """
    problems = []
    for key, name_of in (
        ("table", lambda c: c.table),
        (
            "target_table",
            lambda c: f"{c.target_schema}.{c.target}" if c.target_schema else c.target,
        ),
    ):
        seen: set[str] = set()
        for cfg in tables:
            folded = name_of(cfg).casefold()
            if folded in seen:
                problems.append(
                    f"{path}: table {cfg.table!r}: key {key!r}: "
                    f"{name_of(cfg)!r} is configured twice"
                )
            seen.add(folded)
    return problems


def load_tables_config(path: str | os.PathLike[str] = DEFAULT_TABLES_CONFIG) -> list[TableConfig]:
    """Read and validate tables.json at `path` (`Settings.tables_config`: `$TABLES_CONFIG`)."""
    resolved = Path(path)
    try:
        text = resolved.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{resolved}: file not found (set TABLES_CONFIG or run from the directory that "
            "holds tables.json)"
        ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{resolved}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    return parse_tables_config(raw, str(resolved))
