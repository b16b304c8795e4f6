"""The local demo: a throwaway MariaDB source and target under `.demo/`, with sample data that
matches the repository's tables.json.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pymysql

from mysqlsync_dagster.tools.mariadb_server import BINLOG_ARGS, MariaDBServer, mariadbd_binary
from mysqlsync_dagster.tools.postgres_server import PostgresServer, pg_bin_dir

SOURCE_DATABASE = "shop"
TARGET_DATABASE = "shop_replica"
ENV_MARKER = "# written by `mysqlsync-dagster demo`"

SCHEMA = [
    """CREATE TABLE countries (
        code CHAR(2) CHARACTER SET ascii NOT NULL PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        population BIGINT UNSIGNED NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE customers (
        id INT UNSIGNED NOT NULL PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        email VARCHAR(255) NOT NULL,
        country CHAR(2) CHARACTER SET ascii NULL,
        balance DECIMAL(12,2) NOT NULL DEFAULT 0.00,
        created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL,
        UNIQUE KEY uq_email (email),
        KEY ix_updated_at (updated_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE orders (
        id BIGINT PRIMARY KEY,
        customer_id INT NOT NULL,
        status VARCHAR(20) NOT NULL,
        amount DECIMAL(12,2),
        note TEXT,
        created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL,
        KEY(updated_at)
    ) ENGINE=InnoDB""",
    """CREATE TABLE order_items (
        order_id BIGINT NOT NULL,
        line_no SMALLINT UNSIGNED NOT NULL,
        sku VARCHAR(32) NOT NULL,
        qty INT NOT NULL,
        price DECIMAL(10,2) NOT NULL,
        updated_at DATETIME(3) NOT NULL,
        PRIMARY KEY (order_id, line_no),
        KEY ix_updated_at (updated_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
]


def orders_rows_sql(first: int, last: int) -> str:
    """INSERT for `orders` rows first..last (the DESIGN.md benchmark table), deterministic."""
    return (
        "INSERT INTO orders SELECT seq, 1 + seq % 1000,"
        " ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'cancelled'),"
        " ROUND((seq % 100000) / 7, 2),"
        " IF(seq % 10 = 0, NULL, CONCAT('order note ', seq, ' - ünïcödé ✓')),"
        " TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND,"
        " TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND + INTERVAL seq % 3600 SECOND"
        f" FROM seq_{first}_to_{last}"
    )


SAMPLE_DATA = [
    """INSERT INTO countries VALUES ('DE', 'Germany', 84000000), ('FR', 'France', 68000000),
        ('ID', 'Indonesia', 277000000), ('JP', 'Japan', 124000000), ('BR', 'Brazil', NULL),
        ('IS', 'Ísland', 387000), ('CN', '中国', 1410000000), ('US', 'United States', 335000000)""",
    """INSERT INTO customers SELECT seq, CONCAT('Customer ', seq),
        CONCAT('customer', seq, '@example.com'),
        ELT(1 + seq % 8, 'DE', 'FR', 'ID', 'JP', 'BR', 'IS', 'CN', 'US'),
        ROUND((seq * 37) % 10000 / 3, 2),
        TIMESTAMP'2023-06-01 00:00:00' + INTERVAL seq HOUR,
        TIMESTAMP'2023-06-01 00:00:00' + INTERVAL seq HOUR + INTERVAL seq % 90 DAY
        FROM seq_1_to_1000""",
    orders_rows_sql(1, 20000),
    """INSERT INTO order_items SELECT o.seq, l.seq, CONCAT('SKU-', (o.seq * l.seq) % 500),
        1 + (o.seq + l.seq) % 5, ROUND(((o.seq * 13 + l.seq) % 20000) / 100, 2),
        TIMESTAMP'2024-01-01 00:00:00.000' + INTERVAL o.seq SECOND + INTERVAL l.seq * 1500 MICROSECOND
        FROM seq_1_to_20000 o JOIN seq_1_to_3 l""",
]


ANALYTICS_DATABASE = "shop_analytics"  # the demo's PostgreSQL target


@dataclass
class Demo:
    root: Path
    source: MariaDBServer
    target: MariaDBServer | PostgresServer | Path  # a DuckDB target is a file

    @property
    def source_url(self) -> str:
        return self.source.url(SOURCE_DATABASE)

    @property
    def target_url(self) -> str:
        if isinstance(self.target, Path):
            return f"duckdb:///{self.target}"
        if isinstance(self.target, PostgresServer):
            return self.target.url(ANALYTICS_DATABASE)
        return self.target.url(TARGET_DATABASE)

    def describe_target(self) -> str:
        if isinstance(self.target, Path):
            return f"DuckDB file {self.target}"
        if isinstance(self.target, PostgresServer):
            return f"PostgreSQL on 127.0.0.1:{self.target.port}, database {ANALYTICS_DATABASE}"
        return f"MariaDB on 127.0.0.1:{self.target.port}, database {TARGET_DATABASE}"

    def environment(self) -> dict[str, str]:
        return {"SOURCE_DB_URL": self.source_url, "TARGET_DB_URL": self.target_url}


def ensure_mariadb_installed() -> None:
    """Fail with the fix when `mariadbd` is missing (installing is `scripts/bootstrap.sh`'s job)."""
    if not mariadbd_binary():
        raise SystemExit(
            "mariadbd not found: run ./scripts/bootstrap.sh (it installs Debian's mariadb-server),"
            " or apt-get install mariadb-server"
        )


def _connect(server: MariaDBServer, database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(
        unix_socket=str(server.socket_path),
        user="root",
        database=database,
        charset="utf8mb4",
        autocommit=True,
    )


def load_sample_data(server: MariaDBServer, reset: bool = False) -> bool:
    """Create the sample source database; returns False when it already existed."""
    with contextlib.closing(_connect(server)) as conn, conn.cursor() as cur:
        if reset:
            cur.execute(f"DROP DATABASE IF EXISTS `{SOURCE_DATABASE}`")
        cur.execute("SHOW DATABASES LIKE %s", (SOURCE_DATABASE,))
        if cur.fetchone():
            return False
        cur.execute(f"CREATE DATABASE `{SOURCE_DATABASE}` CHARACTER SET utf8mb4")
        cur.execute(f"USE `{SOURCE_DATABASE}`")
        for statement in SCHEMA + SAMPLE_DATA:
            cur.execute(statement)
    return True


def start_demo(root: Path, reset: bool = False, target_kind: str = "mariadb") -> Demo:
    ensure_mariadb_installed()
    root = root.resolve()
    source = MariaDBServer(root / "source", extra_args=BINLOG_ARGS).start()  # binlog tables too
    load_sample_data(source, reset=reset)
    if target_kind == "postgres":
        return Demo(root, source, start_postgres_target(root, reset))
    if target_kind == "duckdb":
        copy = root / "shop.duckdb"
        if reset:
            copy.unlink(missing_ok=True)
        return Demo(root, source, copy)
    target = MariaDBServer(root / "target").start()
    with contextlib.closing(_connect(target)) as conn, conn.cursor() as cur:
        if reset:
            cur.execute(f"DROP DATABASE IF EXISTS `{TARGET_DATABASE}`")
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{TARGET_DATABASE}` CHARACTER SET utf8mb4")
    return Demo(root, source, target)


def start_postgres_target(root: Path, reset: bool) -> PostgresServer:
    """A throwaway PostgreSQL server under `root/postgres` with an empty analytics database."""
    if pg_bin_dir() is None:
        raise SystemExit(
            "PostgreSQL's initdb not found: run ./scripts/bootstrap.sh (it installs Debian's"
            " postgresql), or apt-get install postgresql"
        )
    import psycopg2

    server = PostgresServer(root / "postgres").start()
    conn = psycopg2.connect(server.url("postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            if reset:
                cur.execute(f'DROP DATABASE IF EXISTS "{ANALYTICS_DATABASE}" WITH (FORCE)')
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ANALYTICS_DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE \"{ANALYTICS_DATABASE}\" ENCODING 'UTF8'")
    finally:
        conn.close()
    return server


def write_env_files(demo: Demo, dotenv: Path) -> list[Path]:
    """Write `.demo/demo.env`, and `.env` unless the user has an `.env` of their own."""
    lines = [ENV_MARKER] + [f"{k}={v}" for k, v in demo.environment().items()]
    text = "\n".join(lines) + "\n"
    written = [demo.root / "demo.env"]
    written[0].write_text(text)
    if not dotenv.exists() or dotenv.read_text().startswith(ENV_MARKER):
        dotenv.write_text(text)
        written.append(dotenv)
    return written


def stop_demo(root: Path) -> None:
    for side in ("source", "target"):
        if (root / side).exists():
            MariaDBServer(root / side).stop()
    PostgresServer(root / "postgres").stop(immediate=False)
