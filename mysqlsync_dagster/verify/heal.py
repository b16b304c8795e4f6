"""Self-healing verification: every run proves what it synced and a slice of the rest, and
repairs what differs, in the same run.

A table run, once its load has committed (and with the table's lock still held), calls `heal`:

1. **The synced window.** An incremental run compares the rows it read (modifier at or after
   the cursor it started from, or NULL) on both sides: one digest query each, through the
   modifier's index; a difference is narrowed to keys (`compare.narrow`).
2. **A rolling slice.** Then consecutive primary-key ranges, resuming where the last run's
   slice ended (kept in the state table), until `verify_budget` rows have been compared; at
   the end of the table the sweep starts over. A full sweep thus completes every
   `ceil(rows / budget)` runs, and no run scans the whole table.
3. **The counts.** When the row counts of the synced scope still differ, the key sets are
   compared range by range (keys only, cheap) to find the rows the slice has not reached yet.

Every differing key is classified by what the source holds now:

- in the synced scope (modifier up to the cursor, or NULL) but missing or different in the
  target: **repaired** by copying the row from the source (the sync's own extraction and
  upsert, by key), then compared again; a row that keeps differing after `REPAIR_ATTEMPTS` is
  **unresolved**, and only that fails the check, naming the keys;
- in the source but outside the scope (changed after the run read it): **pending**, the next
  run copies it;
- absent from the source: deleted there; removed with `detect_deletes`, else **kept** on
  purpose and counted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.targets.base import SweepState
from mysqlsync_dagster.verify.compare import (
    CHECKSUM_MATCH,
    DELETES_HINT,
    FIRST_CHUNK_ROWS,
    MIN_CHUNK_ROWS,
    ROW_COUNT_MATCH,
    SAMPLE_KEYS,
    CheckOutcome,
    Digest,
    Key,
    KeyRange,
    RowDiff,
    TablePair,
    check_failure,
    narrow,
    next_chunk_rows,
    source_row_count,
    table_checks,
)
from mysqlsync_dagster.verify.deletes import absent_in_source, delete_keys, key_set_differences

T = TypeVar("T")
REPAIR_ATTEMPTS = 3
# with several source workers, the slice is cut into this many ranges per worker: equal
# shares, and each worker's next range is ready when its last one ends
PARALLEL_RANGES = 2
REPAIR_BATCH = 10_000  # keys copied from the source per repair (one load, KEYS_PER_QUERY a read)


@dataclass
class SourceHalf:
    """The source's half of a run's rolling slice, and its count, taken while the run's rows
    are still being read and loaded (`take`, in a thread of its own): the load does not change
    the source, and the source server is otherwise idle then. Each range is published as soon
    as it is planned, before its digest is taken, so the verification after the load digests
    the target's side of a range while the source's is still being computed, and counts the
    target meanwhile."""

    start: Key | None  # the sweep's place the slice starts from
    budget: int
    cursor: str | None  # the synced scope's end the digests were taken with
    window_since: str | None = None  # the synced window's start, if its digest is taken too
    window: Future[Digest] = field(default_factory=Future)  # the synced window's source digest
    taken: list[tuple[KeyRange, Future[Digest]]] = field(default_factory=list)
    workers: int = 1  # source digests taken at once (`source_workers`)
    count: bool = True  # count the synced scope too
    source_rows: int | None = None  # the synced scope's rows
    finished: bool = False  # every range and the count taken, or given up
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def ranges(self) -> list[tuple[KeyRange, Digest]]:
        """The ranges whose source digest has been taken, with it."""
        return [(r, d.result()) for r, d in self.taken if d.done() and d.exception() is None]

    def take(self, pair: TablePair) -> None:
        """The source's digests of the slice `_sweep` would compare from the sweep's place
        and the count of its synced scope (unless `count` is off); `pair` scoped to the
        cursor the run will store. Never raises: what it could not take, the verification
        takes itself. With one worker the window, then each range, is digested in turn, the
        ranges sized by the source's pace alone, as `_sweep` sizes them; with more
        (`source_workers`), the slice is cut into ranges of equal rows, digested that many at
        a time beside the window."""
        try:
            with ThreadPoolExecutor(self.workers, "mysqlsync-source-digest") as pool:
                run: Callable[..., Any] = pool.submit if self.workers > 1 else _now
                if self.window_since is not None:  # the verification compares it first
                    window = pair.narrowed_to(self.window_since)
                    run(_fulfil, self.window, partial(window.digest, "source", KeyRange()))
                self._take_ranges(pair, run)
            if self.count:
                self.source_rows = pair.count("source")
        except Exception:  # the verification takes the rest itself
            pass
        finally:
            with self._changed:
                self.finished = True
                self._changed.notify_all()

    def _take_ranges(self, pair: TablePair, run: Callable[..., Any]) -> None:
        """Plan the slice's ranges, publishing each, and have `run` digest it: at once
        (`_now`, the next range sized by this one's pace) or in the pool (equal ranges)."""
        paced = self.workers == 1
        rows_each = (
            FIRST_CHUNK_ROWS
            if paced
            else max(MIN_CHUNK_ROWS, -(-self.budget // (PARALLEL_RANGES * self.workers)))
        )
        lower, planned = self.start, 0
        while planned < self.budget:
            rows = max(1, min(rows_each, self.budget - planned))
            key_range = _slice_range(pair, lower, rows, last=rows == self.budget - planned)
            digest: Future[Digest] = Future()
            with self._changed:
                self.taken.append((key_range, digest))
                self._changed.notify_all()
            began = time.perf_counter()
            taken = run(_fulfil, digest, partial(pair.digest, "source", key_range))
            planned += taken.rows if paced else rows
            if key_range.upper is None:
                break
            if paced:
                rows_each = next_chunk_rows(rows_each, time.perf_counter() - began)
            lower = key_range.upper

    def planned(self) -> Iterator[tuple[KeyRange, Future[Digest]]]:
        """The ranges in order, each as soon as it is planned (its digest may be pending)."""
        position = 0
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda at=position: len(self.taken) > at or self.finished  # type: ignore[misc]
                )
                if len(self.taken) <= position:
                    return
                item = self.taken[position]
            position += 1
            yield item

    def counted_rows(self) -> int | None:
        """The source's count, once taken (None if it could not be)."""
        with self._changed:
            self._changed.wait_for(lambda: self.finished)
        return self.source_rows


def _fulfil(future: Future[T], compute: Callable[[], T]) -> T:
    """`compute()`, its result or its error also set on `future` (for the other thread)."""
    try:
        result = compute()
    except BaseException as error:
        future.set_exception(error)
        raise
    future.set_result(result)
    return result


def _now(compute: Callable[..., T], *args: Any) -> T:
    """`compute(*args)`, here and now (a pool's `submit`, without the pool)."""
    return compute(*args)


def _taken_or(pending: Future[T], compute: Callable[[], T]) -> T:
    """What the source half took, or `compute()` where it could not take it."""
    try:
        return pending.result()
    except Exception:
        return compute()


def _counted(pair: TablePair) -> tuple[int, int]:
    """Both sides' counts of the synced scope, taken at once."""
    source, target, _ = pair.parallel(lambda side: pair.count(side))
    return source, target


def sweep_start(sweep: SweepState) -> Key | None:
    """Where a run's slice starts: the sweep's place, or the table's start for a new sweep."""
    return sweep.position if sweep.started_at is not None else None


def source_workers(pair: TablePair) -> int:
    """How many of the source's digests to take at once. Across engines, two: the target's
    side (DuckDB in process, PostgreSQL) is the quick one, and MariaDB runs each query on one
    core. A 250,000-row slice of `orders` took 0.78-0.97 s as one MariaDB query on this
    project's 2-core machine, and 0.47-0.56 s as four ranges, two at a time. A MySQL target's
    digest is as slow as the source's, and both already run at once."""
    return 2 if pair.cross_engine else 1


def source_half(
    pair: TablePair,
    sweep: SweepState,
    budget: int,
    window_since: str | None = None,
    *,
    count: bool = True,
) -> SourceHalf:
    """A `SourceHalf` of the slice from `sweep`'s place (and of the synced window from
    `window_since`), to be taken (`take`)."""
    return SourceHalf(
        sweep_start(sweep),
        budget,
        pair.cursor,
        window_since,
        workers=source_workers(pair),
        count=count,
    )


@dataclass
class Healing:
    """What one run's verification compared, found and repaired."""

    window_rows: int = 0  # rows of the synced window compared
    sweep_rows: int = 0  # rows of the rolling slice compared
    ranges: int = 0
    differing_ranges: int = 0
    key_scan: bool = False  # the counts differed: the key sets were compared too
    repaired: Counter[str] = field(default_factory=Counter)  # by cause
    kept_deleted: int = 0  # target rows whose key the source no longer has (detect_deletes off)
    pending: int = 0  # rows changed in the source after the run read it: the next run's
    unresolved: list[tuple[str, Key]] = field(default_factory=list)
    sweep: SweepState = field(default_factory=SweepState)
    sweep_completed: bool = False
    source_rows: int = 0  # the synced scope's row counts, after repair
    target_rows: int = 0
    rows_at_cursor: int = 0  # of the difference: rows at the cursor, re-read next run
    counts_known: bool = False  # the counts were not taken: neither side written since
    seconds: float = 0.0

    @property
    def rows_verified(self) -> int:
        return self.window_rows + self.sweep_rows

    @property
    def rows_repaired(self) -> int:
        return sum(self.repaired.values())


Repair = Callable[[Sequence[Key]], int]  # copies these keys' rows from the source


def heal(
    pair: TablePair,
    repair: Repair | None,
    sweep: SweepState,
    *,
    budget: int | None,
    window_since: str | None,
    log: logging.Logger | None = None,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None),
    known_rows: int | None = None,
    source: SourceHalf | None = None,
) -> Healing:
    """Verify the synced window and a slice of `budget` rows from `sweep`'s place (`budget`
    None: the whole table, for partition runs and `check --full`); with `repair`, mend what
    differs. `repair` None only reports (the CLI's `check`). `known_rows`: both sides' rows,
    proven unchanged since they were counted and matched (`verify/idle.py`): not counted again
    unless the slice finds a difference. `source`: the source's half of the slice, taken
    during the load (`source_half`), if it starts where the sweep stands."""
    started = time.perf_counter()
    healing = Healing(sweep=SweepState(**vars(sweep)))
    resolver = Resolver(pair, repair, healing)
    if source is not None and (source.budget, source.start, source.cursor) != (
        budget,
        sweep_start(sweep),
        pair.cursor,
    ):
        source = None
    if source is None and budget is not None and source_workers(pair) > 1:
        # the source's digests ahead of the target's, several at once
        source = source_half(pair, sweep, budget, window_since, count=known_rows is None)
        threading.Thread(
            target=source.take, args=(pair,), name="mysqlsync-source-half", daemon=True
        ).start()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # the counts run beside the slice: the target's beside the target's half, or both
        # beside both halves (the target's digest ends first and leaves its core idle)
        counted: Future[tuple[int, int]] | None = None
        if known_rows is None:
            counted = (
                pool.submit(_counted, pair)
                if source is None
                else pool.submit(_early_counts, pair, source)
            )
        _verify(pair, resolver, healing, budget, now, window_since, known_rows, source, counted)
    if log is not None and repair is not None and healing.rows_repaired:
        log.info(
            "%s: repaired %s rows from the source (%s)",
            pair.cfg.table,
            f"{healing.rows_repaired:,}",
            ", ".join(f"{n} {cause.replace('_', ' ')}" for cause, n in healing.repaired.items()),
        )
    healing.seconds = time.perf_counter() - started
    return healing


def _verify(
    pair: TablePair,
    resolver: Resolver,
    healing: Healing,
    budget: int | None,
    now: Callable[[], dt.datetime],
    window_since: str | None,
    known_rows: int | None,
    source: SourceHalf | None,
    counted: Future[tuple[int, int]] | None,
) -> None:
    """`heal`'s three steps: the window, the slice, the counts."""
    if window_since is not None:
        window = pair.narrowed_to(window_since)
        if source is not None and source.window_since == window_since:
            target_digest = window.digest("target", KeyRange())
            source_digest = _taken_or(source.window, partial(window.digest, "source", KeyRange()))
        else:
            source_digest, target_digest, _ = window.digests(KeyRange())
        healing.window_rows = source_digest.rows
        healing.ranges += 1
        if source_digest != target_digest:
            healing.differing_ranges += 1
            resolver.narrow_and_resolve(window, KeyRange(), source_digest, target_digest)
    _sweep(pair, resolver, healing, budget, now, source)
    if known_rows is not None and not healing.differing_ranges:
        healing.source_rows = healing.target_rows = known_rows
        healing.counts_known = True
        return
    # counted before any repair (a repair's count would differ): the early counts serve
    early = counted.result() if counted is not None and not healing.rows_repaired else None
    _counts(pair, resolver, healing, early)


def _early_counts(pair: TablePair, half: SourceHalf) -> tuple[int, int]:
    """The target's count, and the source's as its half took it (counted here if it could
    not be)."""
    target = pair.count("target")
    source = half.counted_rows()
    return (pair.count("source") if source is None else source), target


def _counts(
    pair: TablePair, resolver: Resolver, healing: Healing, early: tuple[int, int] | None = None
) -> None:
    """Count both sides; when the counts differ in a way the slice does not explain (nor the
    rows at the cursor, nor the deleted rows already known to be kept), compare the key sets
    of the whole table, then count again. `early`: both counts taken already (the source's
    during the load, the target's beside the slice): they serve unless they differ."""
    for attempt in range(2):
        if attempt == 0 and early is not None and early[0] == early[1]:
            source, target = early
        else:  # early counts that differ were taken at different times: count again, at once
            source, target = _counted(pair)
        healing.source_rows, healing.target_rows, healing.rows_at_cursor = source, target, 0
        if source == target:
            healing.sweep.kept = 0
            return
        if pair.scoped:
            strict_source, strict_target, _ = pair.parallel(
                lambda side: pair.count(side, strict=True)
            )
            if strict_source == strict_target:
                healing.rows_at_cursor = abs(target - source)
                return
        known_kept = healing.sweep.kept if not pair.cfg.detect_deletes else 0
        if attempt or target - source == known_kept:
            return
        compare_key_sets(pair, resolver, healing)
        # the key sets were compared whole: every target row the source no longer has is
        # known now (found by the slice or by the key sets)
        healing.sweep.kept = 0 if pair.cfg.detect_deletes else len(resolver.gone)


def _sweep(
    pair: TablePair,
    resolver: Resolver,
    healing: Healing,
    budget: int | None,
    now: Callable[[], dt.datetime],
    half: SourceHalf | None = None,
) -> None:
    """Compare consecutive key ranges from the sweep's place until `budget` rows (the ranges
    of `half`, whose source digests are taken already, first)."""
    state = healing.sweep
    if sweep_start(state) is None:  # a new sweep
        state.started_at, state.runs, state.position = now(), 0, None
    state.runs += 1
    planned = half.planned() if half is not None else iter(())
    chunk_rows = FIRST_CHUNK_ROWS
    lower = state.position
    while True:
        remaining = None if budget is None else budget - healing.sweep_rows
        if remaining is not None and remaining <= 0:
            state.position = lower
            return
        taken = next(planned, None)
        if taken is not None:  # the target's digest while the source's may still be running
            key_range, pending = taken
            began = time.perf_counter()
            target = pair.digest("target", key_range)
            seconds, upper = time.perf_counter() - began, key_range.upper
            source = _taken_or(pending, partial(pair.digest, "source", key_range))
        else:
            rows = chunk_rows if remaining is None else max(1, min(chunk_rows, remaining))
            key_range = _slice_range(pair, lower, rows, last=rows == remaining)
            source, target, seconds = pair.digests(key_range)
            upper = key_range.upper
        healing.ranges += 1
        healing.sweep_rows += source.rows
        if source != target:
            healing.differing_ranges += 1
            if pair.scoped and _same_before_cursor(pair, key_range):
                healing.pending += abs(source.rows - target.rows) or 1  # rows at the cursor
            else:
                resolver.narrow_and_resolve(pair, key_range, source, target)
        if upper is None:  # the end of the table: the sweep is complete
            healing.sweep_completed = True
            state.last_started_at, state.last_runs = state.started_at, state.runs
            state.position, state.started_at, state.runs = None, None, 0
            return
        chunk_rows = next_chunk_rows(chunk_rows, seconds)
        lower = upper


def _slice_range(pair: TablePair, lower: Key | None, rows: int, *, last: bool) -> KeyRange:
    """The slice's next range: `rows` source rows after `lower` (all of them without a
    primary key). When the budget ends with it (`last`) and so does the table, it is left
    unbounded: it completes the sweep."""
    if not pair.shape.primary_key:
        return KeyRange(lower)
    upper = pair.key_at("source", KeyRange(lower), rows - 1)
    if upper is not None and last and pair.key_at("source", KeyRange(upper), 0) is None:
        upper = None
    return KeyRange(lower, upper)


def _same_before_cursor(pair: TablePair, key_range: KeyRange) -> bool:
    """The range differs only in rows at the cursor, which the next run re-reads."""
    source, target, _ = pair.digests(key_range, strict=True)
    return source == target


@dataclass
class Resolver:
    """Classifies differing keys and repairs what the source says the target must hold."""

    pair: TablePair
    repair: Repair | None
    healing: Healing
    seen: set[Key] = field(default_factory=set)  # keys already classified in this run
    gone: set[Key] = field(default_factory=set)  # target keys the source no longer has

    def narrow_and_resolve(
        self, pair: TablePair, key_range: KeyRange, source: Digest, target: Digest
    ) -> None:
        found = RowDiff()
        narrow(pair, key_range, source, target, strict=False, found=found, limit=None)
        self.resolve(found)

    def resolve(self, found: RowDiff) -> None:
        candidates = [
            k
            for k in found.missing_in_target + found.changed + found.extra_in_target
            if k not in self.seen
        ]
        if not candidates:
            return
        self.seen.update(candidates)
        expected = self.pair.in_scope(candidates)
        gone = absent_in_source(self.pair, [k for k in candidates if k not in expected])
        self.gone.update(gone)
        self.healing.pending += len(candidates) - len(expected) - len(gone)
        if gone:
            if self.pair.cfg.detect_deletes and self.repair is not None:
                self.healing.repaired["deleted_in_source"] += delete_keys(self.pair, gone)
            else:
                self.healing.kept_deleted += len(gone)
        missing = set(found.missing_in_target)
        to_copy = [k for k in candidates if k in expected]
        if self.repair is None:
            self.healing.unresolved += [
                ("missing_in_target" if k in missing else "changed", k) for k in to_copy
            ]
            return
        for key in to_copy:
            cause = "missing_in_target" if key in missing else "changed"
            self.healing.repaired[cause] += 1
        self._copy_until_equal(to_copy, missing)

    def _copy_until_equal(self, keys: list[Key], missing: set[Key]) -> None:
        """Copy `keys` from the source and compare them again, a few times; what still
        differs, and is still in scope, could not be repaired."""
        assert self.repair is not None
        for _ in range(REPAIR_ATTEMPTS):
            for i in range(0, len(keys), REPAIR_BATCH):
                self.repair(keys[i : i + REPAIR_BATCH])
            source = self.pair.key_digests("source", keys)
            target = self.pair.key_digests("target", keys)
            differing = [k for k in keys if source.get(k) != target.get(k)]
            if not differing:
                return
            still = self.pair.in_scope(differing)  # others changed meanwhile: pending
            self.healing.pending += len(differing) - len(still)
            keys = [k for k in differing if k in still]
            if not keys:
                return
        self.healing.unresolved += [
            ("missing_in_target" if k in missing else "changed", k) for k in keys
        ]


def compare_key_sets(pair: TablePair, resolver: Resolver, healing: Healing) -> None:
    """The counts differ although the slice found nothing: compare the key sets of the whole
    table (keys only: cheap), to find rows missing from, or extra in, the target."""
    healing.key_scan = True
    for found, _ in key_set_differences(pair):
        resolver.resolve(found)


# -- verdicts ----------------------------------------------------------------------------------
def count_outcome(pair: TablePair, healing: Healing) -> CheckOutcome:
    """`row_count_match` from the counts taken after repair. Rows deleted in the source and
    kept on purpose (`detect_deletes` off) are a warning, never a failure."""
    source, target = healing.source_rows, healing.target_rows
    metadata: dict[str, Any] = {
        "source_rows": source,
        "target_rows": target,
        "difference": target - source,
    }
    text = f"source {source:,} rows, target {target:,} rows{pair.scope_text}"
    if pair.scoped:
        metadata["cursor"] = pair.cursor
    if healing.counts_known:
        text += " (as last counted: neither side written since)"
    elif pair.source_total is not None:
        metadata["source_rows_counted_by"] = "an earlier run (the source not written since)"
        text += " (the source's as an earlier run counted them: not written since)"
    if source == target:
        return CheckOutcome(ROW_COUNT_MATCH, True, text, metadata)
    if healing.rows_at_cursor:
        metadata["rows_pending_at_cursor"] = healing.rows_at_cursor
        text += (
            f"; the {healing.rows_at_cursor:,} rows of difference all have {pair.cfg.modifier}"
            " equal to the cursor and are re-read by the next sync"
        )
        return CheckOutcome(ROW_COUNT_MATCH, True, text, metadata)
    kept = healing.sweep.kept
    if kept and not pair.cfg.detect_deletes and target - source == kept:
        metadata["rows_deleted_in_source_kept"] = kept
        text += (
            f": the target keeps {kept:,} rows deleted in the source, on purpose ({DELETES_HINT})"
        )
        return CheckOutcome(ROW_COUNT_MATCH, False, text, metadata, warning=True)
    text += f": difference {target - source:+,}"
    if target > source and not pair.cfg.detect_deletes:
        text += f" (more rows in the target: {DELETES_HINT})"
    return CheckOutcome(ROW_COUNT_MATCH, False, text, metadata)


def verify_outcome(pair: TablePair, healing: Healing, *, repaired: bool) -> CheckOutcome:
    """`checksum_match` from what the verification compared and repaired: it fails only for
    rows that still differ (`repaired`: after repair; else, read-only, every difference)."""
    metadata: dict[str, Any] = {
        "rows_compared": healing.rows_verified,
        "window_rows": healing.window_rows,
        "sweep_rows": healing.sweep_rows,
        "chunks": healing.ranges,
        "mismatched_chunks": healing.differing_ranges,
        "rows_pending": healing.pending,
        "sweep_complete": healing.sweep_completed,
        "sweep_runs": healing.sweep.last_runs if healing.sweep_completed else healing.sweep.runs,
        "seconds": round(healing.seconds, 3),
        "rows_per_second": (
            round(healing.rows_verified / healing.seconds, 1) if healing.seconds > 0 else 0.0
        ),
    }
    if repaired:
        metadata["rows_repaired"] = healing.rows_repaired
        for cause, rows in sorted(healing.repaired.items()):
            metadata[f"rows_repaired_{cause}"] = rows
    if healing.sweep.last_started_at is not None:
        age = dt.datetime.now(dt.UTC).replace(tzinfo=None) - healing.sweep.last_started_at
        metadata["oldest_verification_seconds"] = round(age.total_seconds(), 1)
    if healing.key_scan:
        metadata["key_sets_compared"] = True
    slice_text = (
        f"the sweep completed ({metadata['sweep_runs']} runs)"
        if healing.sweep_completed
        else f"run {healing.sweep.runs} of the sweep"
    )
    text = (
        f"{healing.rows_verified:,} rows verified{pair.scope_text} ("
        f"{healing.window_rows:,} synced, {healing.sweep_rows:,} of the rolling slice; "
        f"{slice_text})"
    )
    if repaired and healing.rows_repaired:
        text += f"; {healing.rows_repaired:,} rows repaired from the source"
    if healing.pending:
        text += f"; {healing.pending:,} rows changed since the read, re-read by the next sync"
    if healing.kept_deleted:
        metadata["rows_deleted_in_source_kept"] = healing.kept_deleted
        text += (
            f"; {healing.kept_deleted:,} target rows whose key the source no longer has are "
            f"kept ({DELETES_HINT})"
        )
    if not healing.unresolved:
        return CheckOutcome(CHECKSUM_MATCH, True, text + "; all agree", metadata)
    unresolved = healing.unresolved
    # in key order, so that a reader finds a key among the first ones listed (keys whose
    # values do not compare, a NULL part, stay in the order found)
    with contextlib.suppress(TypeError):
        unresolved = sorted(unresolved, key=lambda item: item[1])
    metadata["differing_keys"] = [
        {"difference": kind, "key": pair.key_dict(key)} for kind, key in unresolved[:SAMPLE_KEYS]
    ]
    metadata["all_differences_listed"] = len(unresolved) <= SAMPLE_KEYS
    counts = Counter(kind for kind, _ in unresolved)
    listed = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(counts.items()))
    keys = "; ".join(str(pair.key_dict(key)) for _, key in unresolved[:5])
    verb = "still differ after repair" if repaired else "differ"
    text += f"; {len(unresolved):,} rows {verb} ({listed}): {keys}"
    return CheckOutcome(CHECKSUM_MATCH, False, text, metadata)


def run_all_checks(
    cfg: TableConfig, source_engine: sa.Engine, target_engine: sa.Engine, *, full: bool = False
) -> list[CheckOutcome]:
    """Every check of one table, as `mysqlsync-dagster check` runs them: read-only (nothing
    repaired, the sweep's place not moved). The slice the next run would verify, with the
    counts, or (`full`) the whole table."""
    outcomes = [source_row_count(cfg, source_engine)]
    if full or not cfg.checksum:
        return outcomes + table_checks(cfg, source_engine, target_engine)
    names = [ROW_COUNT_MATCH, CHECKSUM_MATCH]
    try:
        pair = TablePair.open(cfg, source_engine, target_engine)
        assert pair.target is not None
        try:
            sweep = pair.target.read_sweep(cfg.target)
        except sa.exc.DBAPIError:  # a state table of an earlier version: from the start
            sweep = SweepState()
        healing = heal(pair, None, sweep, budget=cfg.verify_budget, window_since=None)
    except Exception as error:
        secrets = [e.url.password for e in (source_engine, target_engine) if e.url.password]
        return outcomes + [check_failure(name, error, secrets) for name in names]
    return [*outcomes, count_outcome(pair, healing), verify_outcome(pair, healing, repaired=False)]
