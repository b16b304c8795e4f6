"""Hard deletes (`detect_deletes`): remove target rows whose key no longer exists in the source.

`delete_missing_rows` walks the target's keys range by range, compares them with the source's
keys in the same range (digests first, keys only where a range differs), confirms each candidate
with the source server itself (its collation decides equality) and deletes the confirmed ones in
small batches, one short transaction each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from mysqlsync_dagster.verify.compare import (
    KEY_DIFF_ROWS,
    ChecksumScan,
    Key,
    RowDiff,
    TablePair,
    key_in,
    narrow,
    scan_chunks,
)

EXISTS_BATCH = 200  # candidate keys confirmed per query
DELETE_BATCH_ROWS = 500


@dataclass
class DeleteReport:
    rows_deleted: int = 0
    chunks: int = 0
    chunks_differing: int = 0
    candidates: int = 0
    seconds: float = 0.0


def delete_missing_rows(
    pair: TablePair,
    *,
    batch_rows: int = DELETE_BATCH_ROWS,
    log: logging.Logger | None = None,
) -> DeleteReport:
    """Delete target rows whose primary key no longer exists in the source.

    The servers compare the key sets first, as digests of key ranges (COUNT and BIT_XOR of the
    keys' CRC32, like the checksum); a differing range is split until its parts hold at most
    KEY_DIFF_ROWS keys, whose keys are then listed and compared: only keys of differing ranges pass through
    Python, never a whole table. A candidate is deleted only after the source server confirms it
    has no such key (its collation, not Python's string equality, decides), in batches of
    `batch_rows`, one short transaction each.
    """
    started = time.perf_counter()
    report = DeleteReport()
    for found, scan in key_set_differences(pair):
        report.chunks, report.chunks_differing = scan.chunks, len(scan.mismatched)
        report.candidates += len(found.extra_in_target)
        gone = absent_in_source(pair, found.extra_in_target)
        for i in range(0, len(gone), batch_rows):
            report.rows_deleted += delete_keys(pair, gone[i : i + batch_rows])
    report.seconds = time.perf_counter() - started
    if log and report.rows_deleted:
        log.info(
            "%s: deleted %s rows no longer in the source (%s of %s key ranges differed, %.1fs)",
            pair.cfg.table,
            f"{report.rows_deleted:,}",
            report.chunks_differing,
            report.chunks,
            report.seconds,
        )
    return report


def key_set_differences(pair: TablePair) -> Iterator[tuple[RowDiff, ChecksumScan]]:
    """The keys that differ between the two sides, range by range, over the whole table: the
    key sets are compared as digests of key ranges (keys only: cheap), and a differing range
    is split until its parts hold at most KEY_DIFF_ROWS keys, which are then listed."""
    scan = scan_chunks(pair, keys_only=True)
    for key_range, source, target in scan.mismatched:
        found = RowDiff()
        narrow(
            pair,
            key_range,
            source,
            target,
            strict=False,
            found=found,
            limit=None,
            keys_only=True,
            leaf_rows=KEY_DIFF_ROWS,
        )
        yield found, scan


def absent_in_source(pair: TablePair, candidates: Sequence[Key]) -> list[Key]:
    """The candidates for which the source has no row with an equal key."""
    table = pair.table("source")
    keys = pair.keys(table, "source")
    absent: list[Key] = []
    for i in range(0, len(candidates), EXISTS_BATCH):
        batch = candidates[i : i + EXISTS_BATCH]
        probes = [
            sa.select(sa.literal_column("1"))
            .select_from(table)
            .where(*(column == value for column, value in zip(keys, key, strict=True)))
            .exists()
            for key in batch
        ]
        with pair.source_engine.connect() as conn:
            found = conn.execute(sa.select(*probes)).one()
        absent += [key for key, exists in zip(batch, found, strict=True) if not exists]
    return absent


def delete_keys(pair: TablePair, keys: Sequence[Key]) -> int:
    if not keys:
        return 0
    table = pair.table("target")
    columns = pair.keys(table, "target")
    statement = sa.delete(table).where(key_in(columns, keys))
    with pair.target_engine.begin() as conn:
        if pair.target_engine.dialect.name == "duckdb":  # its driver reports no rowcount
            return len(conn.execute(statement.returning(*columns)).all())
        return int(conn.execute(statement).rowcount)
