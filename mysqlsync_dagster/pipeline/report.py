"""What one table run did: `SyncReport`, the single record of it.

The asset turns it into its materialization's metadata (`to_metadata`, numeric values the UI
plots); the CLI's summary and `--json`, and the benchmark, read it back from that metadata
(`from_metadata`), so a renamed figure cannot silently break a reader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# figures that only staging mode produces
STAGING_FIELDS = (
    "staging_dir",
    "bytes_staged",
    "files_staged",
    "compression",
    "compression_ratio",
    "extract_seconds",
    "rows_staged",
    "load_seconds",
    "merge_ranges",
)


@dataclass
class SyncReport:
    table: str
    target: str
    target_database: str
    mode: str
    strategy: str
    rows_extracted: int
    rows_written: int
    seconds: float
    load_id: str = ""
    batches: int = 0
    files: int = 0
    bytes_loaded: int = 0
    zero_dates_to_null: int = 0
    cursor_before: str | None = None
    cursor_after: str | None = None
    columns_added: tuple[str, ...] = ()
    columns_changed: tuple[str, ...] = ()
    columns_dropped_in_source: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)
    source_rows_estimate: int | None = None
    reader_peak_rss_mb: float | None = None  # the connectorx child process's own peak
    row_count: int | None = None  # the target table's rows after the run
    rows_deleted: int | None = None  # with detect_deletes
    rows_verified: int | None = None  # compared with the source after the load
    rows_repaired: int | None = None  # copied again, or deleted, because they differed
    verify_seconds: float | None = None  # the verification, repairs included
    window: str | None = None  # a partition run's modifier window
    # change capture ("capture": "binlog"): the binlog position is the cursor
    events_applied: int | None = None  # row events read for the table
    transactions_applied: int | None = None
    binlog_lag_seconds: float | None = None  # commit of the newest change applied -> applied
    columns: list[tuple[str, str, bool]] = field(default_factory=list)  # name, type, nullable
    # staging mode
    staging_dir: str | None = None
    bytes_staged: int | None = None
    files_staged: int | None = None
    compression: str | None = None
    compression_ratio: float | None = None
    extract_seconds: float | None = None
    rows_staged: int | None = None
    load_seconds: float | None = None
    merge_ranges: int | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        """The report as plain values (what `sync --json` prints): numbers as numbers, and
        text entries only when they say something (the UI lists blank ones as blank rows)."""
        figures: dict[str, Any] = {
            "dagster/table_name": f"{self.target_database}.{self.target}",
            "mode": self.mode,
            "strategy": self.strategy,
            "rows_extracted": self.rows_extracted,
            "rows_written": self.rows_written,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "batches": self.batches,
            "files": self.files,
            "bytes_loaded": self.bytes_loaded,
            "zero_dates_to_null": self.zero_dates_to_null,
        }
        for name in ("load_id", "cursor_before", "cursor_after"):  # none without a load
            if getattr(self, name):
                figures[name] = getattr(self, name)
        for name in ("columns_added", "columns_changed", "columns_dropped_in_source"):
            if getattr(self, name):
                figures[name] = ", ".join(getattr(self, name))
        if self.row_count is not None:
            figures["dagster/row_count"] = self.row_count
        if self.warnings:
            figures["warnings"] = "\n".join(self.warnings)
        rounded = {"reader_peak_rss_mb": 1, "binlog_lag_seconds": 3, "verify_seconds": 3}
        for name in (
            "source_rows_estimate",
            "reader_peak_rss_mb",
            "rows_deleted",
            "rows_verified",
            "rows_repaired",
            "events_applied",
            "transactions_applied",
            "binlog_lag_seconds",
            "verify_seconds",
            "window",
            *STAGING_FIELDS,
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, float):
                value = round(value, rounded.get(name, 2 if name == "compression_ratio" else 3))
            figures[name] = value
        return figures

    def to_metadata(self) -> dict[str, Any]:
        """The materialization's metadata: `figures()` typed for the UI (numbers it can plot,
        the staging directory as a path) and the target's column schema."""
        import dagster as dg

        metadata: dict[str, Any] = {
            "dagster/column_schema": dg.TableSchema(
                columns=[
                    dg.TableColumn(
                        name=name,
                        type=column_type,
                        constraints=dg.TableColumnConstraints(nullable=nullable),
                    )
                    for name, column_type, nullable in self.columns
                ]
            )
        }
        for name, value in self.figures().items():
            if name == "staging_dir":
                metadata[name] = dg.MetadataValue.path(value)
            elif isinstance(value, bool) or not isinstance(value, int | float):
                metadata[name] = value
            elif isinstance(value, int):
                metadata[name] = dg.MetadataValue.int(value)
            else:
                metadata[name] = dg.MetadataValue.float(value)
        return metadata

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> SyncReport:
        """Read a report back from materialization metadata (`dg.MetadataValue`s or plain
        values, as `sync --json` prints them)."""
        raw = {key: getattr(value, "value", value) for key, value in metadata.items()}
        table_name = str(raw.get("dagster/table_name") or "")
        database, _, target = table_name.rpartition(".")
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name not in raw:
                continue
            value = raw[item.name]
            if item.name.startswith("columns_"):
                value = tuple(v for v in str(value).split(", ") if v)
            elif item.name == "warnings":
                value = str(value).splitlines()
            elif item.name.startswith("cursor_"):
                value = value or None
            values[item.name] = value
        return cls(
            table=str(raw.get("source_table") or target),
            target=target,
            target_database=database,
            mode=str(raw.get("mode") or ""),
            strategy=str(raw.get("strategy") or ""),
            rows_extracted=int(raw.get("rows_extracted") or 0),
            rows_written=int(raw.get("rows_written") or 0),
            seconds=float(raw.get("seconds") or 0.0),
            row_count=raw.get("dagster/row_count"),
            **{
                k: v
                for k, v in values.items()
                if k
                not in (
                    "mode",
                    "strategy",
                    "rows_extracted",
                    "rows_written",
                    "seconds",
                    "row_count",
                )
            },
        )
