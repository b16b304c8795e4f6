"""Idle tables (verify/idle.py): when neither side has been written since a run that synced
and verified the table, a run reads and writes nothing; any write on either side, on time or
committed late within `lag_seconds`, makes a full run again, and the copy stays exact."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from mysqlsync_dagster_tests.harness import (
    fetch_comparable,
    materialization_metadata,
    python_lines,
    stored_cursor,
)

DDL = (
    "CREATE TABLE items (id INT PRIMARY KEY, note VARCHAR(40) NOT NULL,"
    " updated_at DATETIME NOT NULL, KEY (updated_at))"
)
FILL = (
    "INSERT INTO items SELECT seq, CONCAT('item ', seq),"
    " TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_60"
)


def items(lag_seconds: int = 0, **extra: object) -> dict[str, object]:
    return {
        "table": "items",
        "primary_key": "id",
        "modifier": "updated_at",
        "lag_seconds": lag_seconds,
        **extra,
    }


def sync_once(sync_env, cfg) -> dict[str, object]:
    result = sync_env.sync([cfg])
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations), [
        (e.check_name, e.description) for e in evaluations
    ]
    return materialization_metadata(result, "sync_items")


def sync_until_idle(sync_env, cfg, runs: int = 4) -> tuple[int, dict[str, object]]:
    """Sync (a second apart: UPDATE_TIME's grain) until a run is idle; (runs taken, its
    metadata)."""
    for run in range(1, runs + 1):
        time.sleep(1.1)
        result = sync_env.sync([cfg])
        assert result.success
        metadata = materialization_metadata(result, "sync_items")
        if metadata["strategy"] == "idle":
            return run, metadata
        RUNS_BEFORE_IDLE.append(result)
    raise AssertionError(f"not idle after {runs} runs: last {metadata}")


RUNS_BEFORE_IDLE: list = []  # the last runs before an idle one, to look into


def test_an_idle_table_costs_nothing_until_either_side_is_written(sync_env):
    sync_env.source_exec(DDL, FILL)
    time.sleep(1.1)
    cfg = items()
    assert sync_once(sync_env, cfg)["strategy"] == "swap"
    RUNS_BEFORE_IDLE.clear()
    runs, metadata = sync_until_idle(sync_env, cfg)
    # the run after the copy finds nothing to change, writes nothing, and stores the proof
    assert runs <= 2
    assert metadata["rows_extracted"] == 0 and metadata["rows_written"] == 0
    assert metadata["dagster/row_count"] == 60
    assert "idle_since" in metadata

    # a source write: a full run copies it
    sync_env.source_exec("UPDATE items SET note = 'changed', updated_at = NOW() WHERE id = 3")
    metadata = sync_once(sync_env, cfg)
    assert metadata["strategy"] == "upsert" and metadata["rows_written"] >= 1
    assert sync_env.target_rows("items") == sync_env.source_rows("items")
    sync_until_idle(sync_env, cfg)

    # a write to the target by someone else: a full run, whose verification repairs it
    sync_env.target_exec("UPDATE items SET note = 'tampered' WHERE id = 5")
    metadata = sync_once(sync_env, cfg)
    assert metadata["strategy"] == "upsert"
    assert metadata["rows_repaired"] == 1
    assert sync_env.target_rows("items") == sync_env.source_rows("items")
    sync_until_idle(sync_env, cfg)

    # a changed tables.json entry voids the proof
    assert sync_once(sync_env, items(batch_size=1000))["strategy"] == "upsert"


def test_a_write_committed_late_within_lag_seconds_is_not_hidden(sync_env):
    """InnoDB stamps a table when a transaction commits, but with an earlier time (seen: the
    transaction's start): a transaction open across the run that stores the proof, committed
    after it with an old modifier, must still reach the target (within `lag_seconds`, as for
    the incremental cursor)."""
    sync_env.source_exec(DDL, FILL)
    cfg = items(lag_seconds=5)
    sync_once(sync_env, cfg)
    time.sleep(5.2)  # the fill is older than lag_seconds now
    sync_until_idle(sync_env, cfg)

    opened, commit = threading.Event(), threading.Event()

    def late_writer() -> None:
        with sync_env.source.connect() as conn:
            conn.exec_driver_sql("UPDATE items SET note = 'late' WHERE id = 7")  # old modifier
            opened.set()
            commit.wait(30)
            conn.commit()

    writer = threading.Thread(target=late_writer)
    writer.start()
    try:
        assert opened.wait(10)
        # while it is open: another change, copied; the next run writes nothing and stores
        # a proof, with the late write invisible to it
        sync_env.source_exec("UPDATE items SET note = 'on time', updated_at = NOW() WHERE id = 9")
        assert sync_once(sync_env, cfg)["strategy"] == "upsert"
        time.sleep(1.1)
        assert sync_once(sync_env, cfg)["strategy"] == "upsert"
    finally:
        commit.set()
        writer.join()
    time.sleep(1.1)
    metadata = sync_once(sync_env, cfg)
    assert metadata["strategy"] == "upsert"  # not idle: the commit's stamp is within the lag
    assert sync_env.target_rows("items") == sync_env.source_rows("items")
    with sync_env.target.connect() as conn:
        assert conn.execute(sa.text("SELECT note FROM items WHERE id = 7")).scalar() == "late"


def cli_sync(config: Path, environ: dict[str, str], cwd: Path) -> tuple[dict, str]:
    """`mysqlsync-dagster sync --json` of the one table in `config`, in a fresh interpreter:
    its line, and which of Dagster and dlt it imported ("dagster", "dlt" or "neither"; dlt runs
    in the source reader, a child process of its own)."""
    code = (
        "import sys; from mysqlsync_dagster.tools import cli;"
        f" code = cli.main(['--config', {str(config)!r}, 'sync', '--json']);"
        " print(' '.join(m for m in ('dagster', 'dlt') if m in sys.modules) or 'neither');"
        " sys.exit(code)"
    )
    [line], imported = python_lines(code, environ=environ, cwd=cwd)
    return line, imported.strip()


def test_the_cli_runs_tables_without_importing_dagster(sync_env, tmp_path: Path):
    """Without DAGSTER_HOME a CLI run is kept nowhere: it runs each table through the asset's
    runner (`pipeline/runner.py`) without importing Dagster; with DAGSTER_HOME it is a Dagster
    run, kept in the instance, and says the same."""
    sync_env.source_exec(DDL, FILL)
    time.sleep(1.1)
    cfg = items()
    sync_once(sync_env, cfg)
    sync_until_idle(sync_env, cfg)
    config = tmp_path / "tables.json"
    config.write_text(json.dumps([cfg]))
    environ = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {
        "SOURCE_DB_URL": sync_env.source_url(),
        "TARGET_DB_URL": sync_env.target_url(),
    }
    line, imported = cli_sync(config, environ, tmp_path)
    assert imported == "neither"  # an idle table: nothing to sync, nothing heavy imported
    assert line["ok"] and line["strategy"] == "idle" and line["checks"] == "3/3 ok"
    assert line["rows_read"] == 0 and line["rows_written"] == 0
    assert line["metadata"]["dagster/row_count"] == 60

    # a source write: the table is synced and verified, still without Dagster
    sync_env.source_exec("UPDATE items SET note = 'changed', updated_at = NOW() WHERE id = 9")
    line, imported = cli_sync(config, environ, tmp_path)
    assert imported == "neither"  # the rows came through dlt in the source reader
    assert line["metadata"]["reader_peak_rss_mb"] > 0
    assert line["ok"] and line["strategy"] == "upsert" and line["checks"] == "3/3 ok"
    assert line["rows_written"] >= 1 and line["metadata"]["rows_verified"] >= 60
    assert line["metadata"]["dagster/row_count"] == 60
    assert sync_env.target_rows("items") == sync_env.source_rows("items")

    # the same run through Dagster, kept in an instance: the same line and figures
    home = tmp_path / "dagster_home"
    home.mkdir()
    sync_env.source_exec("UPDATE items SET note = 'again', updated_at = NOW() WHERE id = 9")
    kept, imported = cli_sync(config, environ | {"DAGSTER_HOME": str(home)}, tmp_path)
    assert imported == "dagster"
    assert (kept["ok"], kept["strategy"], kept["checks"]) == (True, "upsert", "3/3 ok")
    assert set(kept["metadata"]) == set(line["metadata"])
    assert sync_env.target_rows("items") == sync_env.source_rows("items")


def test_cli_runs_verify_their_slices_then_idle(sync_env, tmp_path: Path):
    """CLI runs (without Dagster) of a table neither side writes: after the run that stores
    the proof, runs only verify their slice until the slices cover the table, then idle."""
    sync_env.source_exec(DDL, FILL)
    time.sleep(1.1)
    config = tmp_path / "tables.json"
    config.write_text(json.dumps([items(verify_budget=20)]))
    environ = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {
        "SOURCE_DB_URL": sync_env.source_url(),
        "TARGET_DB_URL": sync_env.target_url(),
    }
    strategies = []
    for _ in range(7):
        line, _ = cli_sync(config, environ, tmp_path)
        assert line["ok"] and line["checks"] == "3/3 ok"
        strategies.append(line["strategy"])
        if line["strategy"] == "idle":
            break
        time.sleep(1.1)
    # the copy, the run that stores the proof, 60 rows in slices of 20, then idle
    assert strategies[0] == "swap"
    assert strategies[-1] == "idle" and strategies.count("verify") >= 2, strategies
    assert "upsert" not in strategies[strategies.index("verify") :], strategies
    assert sync_env.target_rows("items") == sync_env.source_rows("items")


def test_a_quiet_table_is_swept_whole_before_it_idles_and_counts_nothing_meanwhile(sync_env):
    """While neither side is written, runs still verify their slice (not their counts: those
    cannot have changed) until the slices have covered the table; then the table idles."""
    sync_env.source_exec(
        DDL,
        "INSERT INTO items SELECT seq, CONCAT('item ', seq),"
        " TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_5000",
    )
    time.sleep(1.1)
    cfg = items(verify_budget=1000)
    sync_once(sync_env, cfg)
    RUNS_BEFORE_IDLE.clear()
    runs, metadata = sync_until_idle(sync_env, cfg, runs=8)
    assert metadata["dagster/row_count"] == 5000
    # 5 slices of 1,000 rows after the proof's first run (which may be the copy's successor)
    assert 5 <= runs <= 7
    quiet = [
        {e.check_name: e for e in r.get_asset_check_evaluations()} for r in RUNS_BEFORE_IDLE[-4:]
    ]
    for checks in quiet:
        assert checks["checksum_match"].metadata["sweep_rows"].value <= 1000
        assert "as last counted: neither side written since" in (
            checks["row_count_match"].description
        )


def test_an_unchanged_full_refresh_table_is_not_copied_again(sync_env):
    """Without a modifier every run used to copy the whole table aside and swap it in; once
    neither side has been written since a verified copy, runs verify instead, then idle."""
    sync_env.source_exec(DDL, FILL)
    time.sleep(1.1)
    cfg = {"table": "items", "primary_key": "id", "lag_seconds": 0}
    assert sync_once(sync_env, cfg)["strategy"] == "swap"
    time.sleep(1.1)
    quiet = sync_once(sync_env, cfg)
    assert quiet["strategy"] == "verify" and quiet["rows_written"] == 0
    assert quiet["rows_verified"] == 60
    _, metadata = sync_until_idle(sync_env, cfg)
    assert metadata["dagster/row_count"] == 60
    sync_env.source_exec("DELETE FROM items WHERE id = 60")
    assert sync_once(sync_env, cfg)["strategy"] == "swap"
    assert sync_env.target_rows("items") == sync_env.source_rows("items")


@pytest.mark.parametrize("mode", ["direct", "staging"])
def test_a_write_with_nothing_after_the_cursor_reads_nothing(sync_env, mode):
    """A source written without a row after the cursor (a fix that leaves the modifier alone,
    say) is not idle, but its run has nothing to read: it reads and writes nothing and goes
    on to its verification, which finds and mends the row. A row at the cursor that differs
    is read as usual."""
    sync_env.source_exec(DDL, FILL)
    time.sleep(1.1)
    cfg = items(mode=mode)
    assert sync_once(sync_env, cfg)["strategy"] == "swap"
    cursor = stored_cursor(sync_env, "items")
    time.sleep(1.1)
    sync_env.source_exec("UPDATE items SET note = 'fixed' WHERE id = 5")
    metadata = sync_once(sync_env, cfg)
    assert metadata["strategy"] == "upsert"
    assert metadata["rows_extracted"] == 0 and metadata["rows_written"] == 0
    assert metadata["rows_repaired"] == 1  # the verification's slice found it
    assert stored_cursor(sync_env, "items") == cursor
    assert fetch_comparable(sync_env.target, "items", skip_dlt=True) == fetch_comparable(
        sync_env.source, "items"
    )

    # the row at the cursor (id 60, the latest modifier) changed: read, not repaired
    time.sleep(1.1)
    sync_env.source_exec("UPDATE items SET note = 'at the cursor' WHERE id = 60")
    metadata = sync_once(sync_env, cfg)
    assert metadata["rows_extracted"] == 1 and metadata["rows_written"] == 1
    assert metadata["rows_repaired"] == 0
    assert fetch_comparable(sync_env.target, "items", skip_dlt=True) == fetch_comparable(
        sync_env.source, "items"
    )


def test_a_slice_counts_toward_idle_only_after_the_second_of_the_last_write():
    """UPDATE_TIME has whole seconds: a write later in the second of the target's last write
    leaves it as it is. A slice compared in that second may have run before such a write, so
    it does not count toward the coverage that lets the table idle; one begun after it does."""
    import datetime as dt

    from mysqlsync_dagster.verify.idle import Proof, TableClock, swept_rows

    written = 1_700_000_000.0  # the target's UPDATE_TIME, a whole second
    proof = Proof(1.0, written, "token", 5000, dt.datetime(2026, 1, 1), swept=3000)
    same_second = TableClock(written, written + 0.9, None)
    later = TableClock(written, written + 1.0, None)
    assert swept_rows(proof, written, same_second, 1000) == 3000
    assert swept_rows(proof, written, later, 1000) == 4000
    assert swept_rows(proof, written, None, 1000) == 3000  # when the run began is unknown
    assert swept_rows(proof, written + 1, later, 1000) == 0  # written since: anew
    assert swept_rows(None, written, later, 1000) == 0
