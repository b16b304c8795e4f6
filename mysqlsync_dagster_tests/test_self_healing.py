"""Self-healing: each way a cursor-based copy drifts from its source is repaired by the next
ordinary runs, and verification costs what the run's budget allows, not the table's size.

Every test judges the result by an independent comparison of all rows (`fetch_comparable`),
never by the product's own checks alone.
"""

from __future__ import annotations

import threading
import time

import dagster as dg
import pytest

from mysqlsync_dagster.verify.compare import TablePair
from mysqlsync_dagster_tests.harness import fetch_comparable, materialization_metadata

ORDERS = {"table": "orders", "primary_key": "id", "modifier": "updated_at"}


def create_orders(sync_env, rows: int = 500) -> None:
    sync_env.source_exec(
        "CREATE TABLE orders (id INT PRIMARY KEY, status VARCHAR(20) NOT NULL,"
        " updated_at DATETIME NULL, KEY (updated_at))",
        "INSERT INTO orders SELECT seq, 'new', TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq"
        f" MINUTE FROM seq_1_to_{rows}",
    )


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def runs_until_equal(sync_env, table: dict, limit: int = 2) -> int:
    """Ordinary syncs, until the target equals the source; returns how many it took."""
    for run in range(1, limit + 1):
        result = sync_env.sync([table], raise_on_error=False)
        assert result.success, [e.description for e in result.get_asset_check_evaluations()]
        if sync_env.target_rows(table["table"]) == sync_env.source_rows(table["table"]):
            return run
    raise AssertionError(f"the target still differs from the source after {limit} runs")


@pytest.mark.parametrize("mode", ["direct", "staging"])
def test_rows_with_a_null_modifier_are_copied(sync_env, mode):
    create_orders(sync_env)
    table = {**ORDERS, "mode": mode}
    assert sync_env.sync([table]).success
    sync_env.source_exec(
        "INSERT INTO orders VALUES (1001, 'unstamped', NULL)",
        "UPDATE orders SET status = 'cleared', updated_at = NULL WHERE id = 7",
    )
    assert runs_until_equal(sync_env, table) == 1
    # the incremental read takes them (through the modifier's index), no repair needed
    meta = materialization_metadata(sync_env.sync([table]))
    assert meta["rows_repaired"] == 0


def test_a_late_commit_with_an_older_modifier_is_not_lost(sync_env):
    """A transaction that writes a row stamped before the cursor and commits after a sync
    read the source: the classic hole of cursor-based copies."""
    create_orders(sync_env)
    assert sync_env.sync([ORDERS]).success
    late = sync_env.servers.source.engine(sync_env.source_db)
    with late.connect() as conn:
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("INSERT INTO orders VALUES (2000, 'late', '2024-01-01 03:00:00')")
        # meanwhile newer rows are committed and synced: the cursor passes 03:00
        sync_env.source_exec("INSERT INTO orders VALUES (2001, 'newer', '2024-06-01 00:00:00')")
        assert sync_env.sync([ORDERS]).success
        conn.exec_driver_sql("COMMIT")
    late.dispose()
    assert runs_until_equal(sync_env, ORDERS) <= 2


def test_a_modifier_moved_backwards_is_repaired(sync_env):
    create_orders(sync_env)
    assert sync_env.sync([ORDERS]).success
    # restored from a backup: older stamp, different content, below the cursor
    sync_env.source_exec(
        "UPDATE orders SET status = 'restored', updated_at = '2023-06-01' WHERE id = 42"
    )
    assert runs_until_equal(sync_env, ORDERS) == 1
    checksum = checks(sync_env.sync([ORDERS]))["checksum_match"]
    assert checksum.passed


@pytest.mark.parametrize("mode", ["direct", "staging"])
def test_the_target_changed_outside_the_sync_is_repaired(sync_env, mode):
    create_orders(sync_env)
    table = {**ORDERS, "mode": mode}
    assert sync_env.sync([table]).success
    sync_env.target_exec(
        "UPDATE orders SET status = 'edited by hand' WHERE id = 10",
        "DELETE FROM orders WHERE id = 20",
        "INSERT INTO orders (id, status, updated_at) VALUES (9999, 'stray', '2024-01-01')",
    )
    result = sync_env.sync([table])
    assert result.success
    meta = materialization_metadata(result)
    assert meta["rows_repaired"] == 2  # one changed, one missing
    verdicts = checks(result)
    assert verdicts["checksum_match"].metadata["rows_repaired_changed"].value == 1
    assert verdicts["checksum_match"].metadata["rows_repaired_missing_in_target"].value == 1
    # the stray row's key is not in the source: kept on purpose (detect_deletes is off)
    assert verdicts["row_count_match"].severity == dg.AssetCheckSeverity.WARN
    rows = sync_env.target_rows("orders")
    assert [r for r in rows if r[0] != 9999] == sync_env.source_rows("orders")
    # with detect_deletes it goes too, and the copy is exact
    assert runs_until_equal(sync_env, {**table, "detect_deletes": True}) == 1


@pytest.mark.parametrize("mode", ["direct", "staging"])
def test_dense_drift_is_repaired_row_for_row(sync_env, mode):
    """A bulk UPDATE that left the modifier alone (every 40th row of 60,000) and a target
    edited in many places: ranges where most parts differ are compared row by row rather
    than split further (`compare.DENSE_LEAF_ROWS`); every row is found and repaired once."""
    create_orders(sync_env, rows=60_000)
    table = {**ORDERS, "mode": mode}
    assert sync_env.sync([table]).success
    sync_env.source_exec(
        "UPDATE orders SET status = 'bulk', updated_at = updated_at WHERE id % 40 = 0"
    )
    sync_env.target_exec(
        "DELETE FROM orders WHERE id BETWEEN 10001 AND 10030",
        "UPDATE orders SET status = 'edited' WHERE id % 97 = 1",
    )
    # row 60,000 holds the cursor's stamp: the sync re-reads it, no repair needed
    changed = sum(1 for i in range(1, 60_000) if i % 40 == 0 or i % 97 == 1)
    assert changed == 2_102
    result = sync_env.sync([table])
    assert result.success
    verdicts = checks(result)
    assert verdicts["checksum_match"].passed
    assert verdicts["checksum_match"].metadata["rows_repaired_changed"].value == changed
    assert verdicts["checksum_match"].metadata["rows_repaired_missing_in_target"].value == 30
    assert materialization_metadata(result)["rows_repaired"] == changed + 30
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")
    assert materialization_metadata(sync_env.sync([table]))["rows_repaired"] == 0


def test_deletes_in_the_source_never_fail_the_run(sync_env):
    create_orders(sync_env)
    assert sync_env.sync([ORDERS]).success
    sync_env.source_exec("DELETE FROM orders WHERE id IN (3, 300)")
    for _ in range(2):
        result = sync_env.sync([ORDERS])
        assert result.success
        count = checks(result)["row_count_match"]
        assert not count.passed and count.severity == dg.AssetCheckSeverity.WARN
        assert count.metadata["rows_deleted_in_source_kept"].value == 2
    assert len(sync_env.target_rows("orders")) == 500
    assert runs_until_equal(sync_env, {**ORDERS, "detect_deletes": True}) == 1


def test_a_difference_repair_cannot_fix_fails_the_check_naming_the_key(sync_env):
    create_orders(sync_env)
    assert sync_env.sync([ORDERS]).success
    sync_env.target_exec(
        "CREATE TRIGGER orders_stuck BEFORE UPDATE ON orders FOR EACH ROW"
        " SET NEW.status = IF(NEW.id = 77, 'stuck', NEW.status)",
        "UPDATE orders SET status = 'x' WHERE id = 77",
    )
    result = sync_env.sync([ORDERS], raise_on_error=False)
    assert not result.success  # the blocking check stops downstream assets
    checksum = checks(result)["checksum_match"]
    assert not checksum.passed and checksum.severity == dg.AssetCheckSeverity.ERROR
    assert checksum.metadata["differing_keys"].value == [
        {"difference": "changed", "key": {"id": 77}}
    ]
    assert "{'id': 77}" in checksum.description


def test_a_writer_inserting_during_the_sync_causes_no_repair(sync_env):
    sync_env.source_exec(
        "CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, status VARCHAR(20),"
        " updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, KEY (updated_at))",
        "INSERT INTO orders (status, updated_at) SELECT 'old', '2024-01-01' + INTERVAL seq MINUTE"
        " FROM seq_1_to_3000",
    )
    stop = threading.Event()

    def writer() -> None:
        with sync_env.source.connect() as conn:
            while not stop.is_set():
                conn.exec_driver_sql("INSERT INTO orders (status) VALUES ('new'), ('new')")
                conn.commit()
                time.sleep(0.002)

    table = {**ORDERS, "batch_size": 500}
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            result = sync_env.sync([table])
            assert result.success
            assert materialization_metadata(result)["rows_repaired"] == 0
            assert all(e.passed for e in result.get_asset_check_evaluations())
    finally:
        stop.set()
        thread.join()


def test_a_no_change_run_verifies_its_budget_and_the_sweep_completes(sync_env):
    create_orders(sync_env, rows=5000)
    table = {**ORDERS, "verify_budget": 1000, "lag_seconds": 0}
    assert sync_env.sync([table]).success  # run 1 of the sweep
    completed_at = None
    for run in range(2, 8):
        result = sync_env.sync([table])
        checksum = checks(result)["checksum_match"].metadata
        assert checksum["sweep_rows"].value <= 1000
        assert checksum["window_rows"].value <= 2  # the rows at the cursor
        if checksum["sweep_complete"].value:
            completed_at = run
            assert checksum["sweep_runs"].value == 5
            break
    assert completed_at == 5  # 5,000 rows at 1,000 a run
    # a damage anywhere is found by the next sweep at the latest, and repaired
    sync_env.target_exec("UPDATE orders SET status = 'drift' WHERE id = 4321")
    repaired = 0
    for _ in range(5):
        repaired += materialization_metadata(sync_env.sync([table]))["rows_repaired"]
    assert repaired == 1
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")


def test_check_full_and_the_slice_only_read(sync_env, tmp_path, monkeypatch, capsys):
    from mysqlsync_dagster.tools import cli

    create_orders(sync_env, rows=3000)
    config = tmp_path / "tables.json"
    config.write_text(
        '[{"table": "orders", "primary_key": "id", "modifier": "updated_at",'
        ' "verify_budget": 1000}]'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DB_URL", sync_env.source_url())
    monkeypatch.setenv("TARGET_DB_URL", sync_env.target_url())
    assert cli.main(["--config", str(config), "sync"]) == 0
    sync_env.target_exec("UPDATE orders SET status = 'drift' WHERE id = 2900")
    capsys.readouterr()
    # the slice the next sync verifies (rows 1..1000) does not reach row 2900
    assert cli.main(["--config", str(config), "check"]) == 0
    assert "sweep_rows=1,000" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "check", "--full"]) == 1
    out = capsys.readouterr().out
    assert "changed {'id': 2900}" in out
    # nothing was repaired by the checks
    assert sync_env.target_rows("orders") != sync_env.source_rows("orders")


@pytest.mark.parametrize("mode", ["direct", "staging"])
def test_the_source_half_taken_during_the_load_finds_the_same_drift(sync_env, mode, monkeypatch):
    """A run with rows to read takes the source's half of its slice, and the source's count,
    while it reads and loads them (`heal.source_half`); the verification after the load
    computes only the target's half. It finds and repairs what drifted in the target all the
    same, and counts again once it has repaired."""
    from mysqlsync_dagster.pipeline import sync_run

    create_orders(sync_env)
    table = {**ORDERS, "mode": mode}
    assert sync_env.sync([table]).success
    taken = []
    real = sync_run.source_half

    def spy(*args):
        taken.append(real(*args))
        return taken[-1]

    monkeypatch.setattr(sync_run, "source_half", spy)
    # the source's digest of a slice range waits (up to 20 s) until the verification has
    # begun the target's digest of that range: it does not wait for the source's
    target_began: dict[object, threading.Event] = {}
    overlapped = []
    real_digest = TablePair.digest

    def digest(self, side, key_range, **kwargs):
        began = target_began.setdefault(key_range, threading.Event())
        if side == "target" and not kwargs:
            began.set()
        elif threading.current_thread().name == "mysqlsync-source-half":
            overlapped.append(began.wait(20))
        return real_digest(self, side, key_range, **kwargs)

    monkeypatch.setattr(TablePair, "digest", digest)
    sync_env.target_exec(
        "UPDATE orders SET status = 'edited by hand' WHERE id = 10",
        "DELETE FROM orders WHERE id = 20",
    )
    sync_env.source_exec("UPDATE orders SET status = 'paid', updated_at = NOW() WHERE id = 30")
    result = sync_env.sync([table])
    assert result.success
    meta = materialization_metadata(result)
    assert meta["rows_written"] == 2  # the changed row, and the one at the cursor (re-read)
    assert meta["rows_repaired"] == 2
    # the half covered the whole table (its budget) in the scope the run stored: all rows but
    # the one changed within lag_seconds, which the next run reads again
    [half] = taken
    assert half.source_rows == 499 and sum(d.rows for _, d in half.ranges) == 499
    assert overlapped and all(overlapped)  # each range's two digests ran at the same time
    # the synced window's source digest, taken early: the row at the stored cursor (the
    # changed row is within lag_seconds, after the stored scope)
    assert half.window.result().rows == 1
    assert "(1 synced, 499 of the rolling slice" in checks(result)["checksum_match"].description
    verdicts = checks(result)
    assert verdicts["row_count_match"].passed and verdicts["checksum_match"].passed
    assert fetch_comparable(sync_env.target, "orders", skip_dlt=True) == fetch_comparable(
        sync_env.source, "orders"
    )


@pytest.mark.parametrize("env_name", ["pg_sync_env", "duck_sync_env"])
def test_a_full_refresh_takes_the_source_half_once_its_read_ends(request, env_name, monkeypatch):
    """Into PostgreSQL and DuckDB, a full refresh takes the source's half of its slice while
    the load's tail, the key and the swap run (the source is idle then), not before its read
    ends. A row the source changed after the read, while the copy was still loading, is
    found by that half and repaired in the same run: the run ends with an exact copy."""
    from mysqlsync_dagster.pipeline import parts, sync_run

    env = request.getfixturevalue(env_name)
    create_orders(env, rows=3000)
    table = {"table": "orders", "primary_key": "id"}  # no modifier: every run a full refresh
    events: list[str] = []
    real_init = parts.Extraction.__init__

    def init(self, batches, sink, progress=None, read_done=None):
        def done():
            events.append("read done")
            # the source changes after the read: the copy being loaded has the old row
            env.source_exec("UPDATE orders SET status = 'late' WHERE id = 2500")
            if read_done is not None:
                read_done()

        real_init(self, batches, sink, progress, done)

    real_half = sync_run.source_half

    def half(*args, **kwargs):
        events.append("half")
        return real_half(*args, **kwargs)

    monkeypatch.setattr(parts.Extraction, "__init__", init)
    monkeypatch.setattr(sync_run, "source_half", half)
    result = env.sync([table])
    assert result.success
    meta = materialization_metadata(result)
    assert meta["strategy"] == "swap" and meta["rows_written"] == 3000
    assert events == ["read done", "half"]  # the half was taken once the read had ended
    assert meta["rows_repaired"] == 1
    verdicts = checks(result)
    assert verdicts["row_count_match"].passed and verdicts["checksum_match"].passed
    assert sorted(env.target_rows("orders")) == sorted(env.source_rows("orders"))
