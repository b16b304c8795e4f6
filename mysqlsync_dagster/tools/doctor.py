"""`mysqlsync-dagster doctor`: is this deployment ready to sync, and if not, what to fix.

The verdicts are pure functions over facts (grants, index lists, table statistics) so they are
tested without a server; the I/O is a handful of batched `information_schema` queries per side,
whatever the number of tables. Nothing printed here contains a password: connection errors are
reduced to the server's message and redacted, URLs are shown with the password masked.

Exit codes: 0 healthy, 1 degraded (warnings only), 2 broken (at least one failure).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mysqlsync_dagster.catalog import (
    Finding,
    TableFacts,
    exit_code,
    human_bytes,
    preflight,
    read_table_facts,
    recommend_mode,
    worst,
)
from mysqlsync_dagster.config import TableConfig, load_tables_config
from mysqlsync_dagster.db import create_engine
from mysqlsync_dagster.errors import CONNECTION_HINTS, ConfigError, mysql_error_code, redact
from mysqlsync_dagster.pipeline.binlog import ROW_SETTINGS, binlog_variables, setting_problems
from mysqlsync_dagster.settings import (
    BINLOG_SERVER_ID_SPAN,
    DatabaseSettings,
    Settings,
    database_settings,
    environment,
    redact_url,
    secret_values,
)
from mysqlsync_dagster.tools.text import text_table

VERDICTS = {0: "healthy", 1: "degraded", 2: "broken"}


SOURCE_PRIVILEGES = ("SELECT",)
TARGET_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "INDEX", "DROP")
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", None, ""})
CONNECT_TIMEOUT_SECONDS = 5


# -- findings ------------------------------------------------------------------------------
# -- grants --------------------------------------------------------------------------------
_NAME = r"(?:`(?:[^`]|``)*`|\*|[^\s.`]+)"  # `quoted` (may hold spaces and dots), * or bare
_GRANT = re.compile(
    r"^GRANT\s+(?P<privs>.+?)\s+ON\s+(?:(?:TABLE|PROCEDURE|FUNCTION|PACKAGE(?:\s+BODY)?)\s+)?"
    rf"(?P<object>{_NAME}\.{_NAME})\s+TO\s",
    re.IGNORECASE,
)


@dataclass
class Grants:
    """Privileges of the connected account, as SHOW GRANTS lists them."""

    global_privs: set[str] = field(default_factory=set)
    database_privs: list[tuple[str, set[str]]] = field(default_factory=list)  # (pattern, privs)
    table_privs: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    unparsed: list[str] = field(default_factory=list)

    def on_database(self, database: str) -> set[str]:
        """Privileges that apply to every table of `database` (global and database level)."""
        privs = set(self.global_privs)
        for pattern, granted in self.database_privs:
            if _database_pattern(pattern).fullmatch(database):
                privs |= granted
        return privs

    def on_table(self, database: str, table: str) -> set[str]:
        return self.on_database(database) | self.table_privs.get((database, table), set())


def _split_privileges(text: str) -> set[str]:
    """'SELECT, INSERT (a, b), ALL PRIVILEGES' -> {'SELECT', 'INSERT', 'ALL'}; column lists go."""
    depth, current, parts = 0, [], []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        if depth == 0 and ch not in "()":
            current.append(ch)
    parts.append("".join(current))
    privs = {" ".join(p.split()).upper() for p in parts if p.strip()}
    if "ALL PRIVILEGES" in privs or "ALL" in privs:
        privs = (privs - {"ALL PRIVILEGES"}) | {"ALL"}
    return privs - {"USAGE"}


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == "`":
        return name[1:-1].replace("``", "`")
    return name


def _split_object(obj: str) -> tuple[str, str]:
    """'`db`.`t`' -> ('db', 't'); '*.*' -> ('*', '*'); backticks may hide dots."""
    match = re.fullmatch(rf"({_NAME})\.({_NAME})", obj)
    if not match:
        return obj, ""
    return _unquote(match.group(1)), _unquote(match.group(2))


def _database_pattern(pattern: str) -> re.Pattern[str]:
    """A grant's database name is a LIKE pattern: % and _ are wildcards, \\_ and \\% literal."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE)


def parse_grants(lines: Iterable[str]) -> Grants:
    """Parse the output of SHOW GRANTS (MySQL and MariaDB spellings)."""
    grants = Grants()
    for line in lines:
        match = _GRANT.match(line.strip())
        if not match:
            # role grants ("GRANT `role` TO ...") and proxies carry no object privileges here
            grants.unparsed.append(line)
            continue
        privs = _split_privileges(match.group("privs"))
        database, table = _split_object(match.group("object"))
        if database == "*":
            grants.global_privs |= privs
        elif table == "*":
            grants.database_privs.append((database, privs))
        else:
            grants.table_privs.setdefault((database, table), set()).update(privs)
    return grants


def missing_privileges(granted: set[str], required: Sequence[str]) -> list[str]:
    if "ALL" in granted:
        return []
    return [p for p in required if p not in granted]


def grant_findings(
    side: str, grants: Grants, database: str, tables: Sequence[str] = ()
) -> list[Finding]:
    """SELECT on the source (database, or every configured table); the full set on the target."""
    required = SOURCE_PRIVILEGES if side == "source" else TARGET_PRIVILEGES
    missing = missing_privileges(grants.on_database(database), required)
    if not missing:
        return [Finding(side, "grants", "ok", f"{', '.join(required)} on `{database}`")]
    if side == "source" and tables:
        lacking = [t for t in tables if missing_privileges(grants.on_table(database, t), required)]
        if not lacking:
            return [
                Finding(side, "grants", "ok", f"SELECT on each configured table of `{database}`")
            ]
        return [
            Finding(
                side,
                "grants",
                "fail",
                f"SELECT missing on {len(lacking)} table(s) of `{database}`: "
                + ", ".join(lacking[:10])
                + (" ..." if len(lacking) > 10 else "")
                + f" (GRANT SELECT ON `{database}`.* TO <user>)",
            )
        ]
    note = (
        " (granted through a role? activate it as the user's default role)"
        if grants.unparsed
        else ""
    )
    return [
        Finding(
            side,
            "grants",
            "fail",
            f"missing {', '.join(missing)} on `{database}`: "
            f"GRANT {', '.join(required)} ON `{database}`.* TO <user>{note}",
        )
    ]


# -- change capture ------------------------------------------------------------------------
def binlog_findings(
    variables: Mapping[str, str], grants: Grants, settings: Settings, tables: Sequence[TableConfig]
) -> list[Finding]:
    """What `"capture": "binlog"` tables need of the source (`pipeline/binlog.py`), each with
    the statement that fixes it."""
    names = ", ".join(cfg.table for cfg in tables if cfg.binlog)
    out: list[Finding] = []

    def need(check: str, ok: bool, good: str, fix: str) -> None:
        out.append(Finding("source", check, "ok" if ok else "fail", good if ok else fix))

    version = variables.get("version", "")
    need(
        "binlog",
        "mariadb" in version.lower(),
        f"MariaDB {version.split('-')[0]}: consistent-snapshot binlog positions",
        f"capture 'binlog' ({names}) needs a MariaDB source (its consistent-snapshot binlog "
        f"position); this is MySQL {version}: use capture 'modifier'",
    )
    log_bin = variables.get("log_bin", "OFF").upper() in ("ON", "1")
    need(
        "binlog",
        log_bin,
        "log_bin ON",
        f"the source writes no binlog, which capture 'binlog' ({names}) reads: set log_bin "
        "(log-bin=mysql-bin under [mariadb] in the server's config) and restart it",
    )
    for variable, problem in setting_problems(variables).items():
        wanted = ROW_SETTINGS.get(variable, "OFF")
        need("binlog", problem is None, f"{variable}={wanted}", problem or "")
    granted = grants.global_privs
    lacking = [
        privilege
        for privilege, aliases in (
            ("REPLICATION SLAVE", {"REPLICATION SLAVE", "REPLICATION REPLICA"}),
            ("REPLICATION CLIENT", {"REPLICATION CLIENT", "BINLOG MONITOR"}),
        )
        if "ALL" not in granted and not aliases & granted
    ]
    need(
        "binlog grants",
        not lacking,
        "REPLICATION SLAVE, REPLICATION CLIENT",
        f"missing {', '.join(lacking)} to read the binlog: GRANT {', '.join(lacking)} ON *.* "
        "TO <user>",
    )
    server_id = int(variables.get("server_id") or 0)
    first, last = settings.binlog_server_id, settings.binlog_server_id + BINLOG_SERVER_ID_SPAN - 1
    need(
        "binlog server id",
        not first <= server_id <= last,
        f"readers use server ids {first}-{last} (the source is {server_id})",
        f"the source's server_id {server_id} is among the readers' ids {first}-{last}: set "
        "BINLOG_SERVER_ID to a range no server of the replication topology uses",
    )
    seconds = int(variables.get("binlog_expire_logs_seconds") or 0) or int(
        float(variables.get("expire_logs_days") or 0) * 86400
    )
    if seconds == 0:
        out.append(Finding("source", "binlog retention", "ok", "binlog kept until purged"))
    else:
        enough = seconds >= max(24 * 3600, 10 * settings.interval)
        out.append(
            Finding(
                "source",
                "binlog retention",
                "ok" if enough else "warn",
                f"binlog kept {seconds / 3600:g} h, syncs every {settings.interval} s"
                if enough
                else f"the binlog is kept only {seconds / 3600:g} h: a sync stopped longer "
                "than that must copy its binlog tables anew (BINLOG_RESNAPSHOT); keep it at "
                "least a day: SET GLOBAL binlog_expire_logs_seconds = 604800",
            )
        )
    return out


# -- connections ---------------------------------------------------------------------------
@dataclass
class ServerFacts:
    version: str
    tls_version: str  # "" when the session is not encrypted
    tls_cipher: str
    local_infile: bool
    grant_lines: list[str]


def tls_findings(side: str, settings: DatabaseSettings, facts: ServerFacts) -> list[Finding]:
    if facts.tls_version:
        tls = f"TLS {facts.tls_version} ({facts.tls_cipher})"
        if settings.ssl and not settings.ssl_verify:
            return [
                Finding(
                    side,
                    "tls",
                    "warn",
                    f"{tls}, but certificate and host name are NOT verified "
                    f"({side.upper()}_DB_SSL_VERIFY is off)",
                )
            ]
        return [Finding(side, "tls", "ok", tls)]
    if settings.ssl:
        return [Finding(side, "tls", "fail", "TLS is configured but the session is not encrypted")]
    if settings.url.host in LOCAL_HOSTS:
        return [Finding(side, "tls", "ok", "not encrypted (local connection)")]
    return [
        Finding(
            side,
            "tls",
            "warn",
            f"not encrypted: credentials and rows cross the network in clear "
            f"(set {side.upper()}_DB_SSL_CA)",
        )
    ]


def error_message(error: BaseException, secrets: Sequence[str]) -> str:
    """The server's or driver's own words, without SQLAlchemy's wrapper, secrets redacted."""
    orig = getattr(error, "orig", None) or error
    args = getattr(orig, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        text = f"{args[1]} (MySQL error {args[0]})"
    else:
        text = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    return redact(text, secrets)


def read_server_facts(conn: sa.Connection) -> ServerFacts:
    version = conn.exec_driver_sql("SELECT VERSION()").scalar_one()
    status = dict(
        conn.exec_driver_sql(
            "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')"
        ).all()
    )
    local_infile = conn.exec_driver_sql("SELECT @@GLOBAL.local_infile").scalar_one()
    grant_lines = [row[0] for row in conn.exec_driver_sql("SHOW GRANTS")]
    return ServerFacts(
        version=str(version),
        tls_version=str(status.get("Ssl_version") or ""),
        tls_cipher=str(status.get("Ssl_cipher") or ""),
        local_infile=bool(int(local_infile)),
        grant_lines=grant_lines,
    )


# -- tables --------------------------------------------------------------------------------
# -- the whole diagnosis -------------------------------------------------------------------
@dataclass
class SideReport:
    side: str
    url: str = ""  # password masked
    database: str = ""
    version: str = ""
    tls: str = ""
    settings: DatabaseSettings | None = field(default=None, repr=False)
    connected: bool = False


@dataclass
class Report:
    config_path: str
    findings: list[Finding] = field(default_factory=list)
    sides: dict[str, SideReport] = field(default_factory=dict)
    tables: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)

    @property
    def verdict(self) -> str:
        return VERDICTS[self.exit_code]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.verdict,
            "exit_code": self.exit_code,
            "config": self.config_path,
            "seconds": round(self.seconds, 3),
            "source": _side_dict(self.sides.get("source")),
            "target": _side_dict(self.sides.get("target")),
            "tables": self.tables,
            "findings": [f.as_dict() for f in self.findings],
        }


def _side_dict(side: SideReport | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {
        "url": side.url,
        "database": side.database,
        "connected": side.connected,
        "version": side.version,
        "tls": side.tls,
    }


def _check_side(
    side: str,
    environ: Mapping[str, str],
    tables: Sequence[TableConfig],
    report: Report,
    runtime: Settings,
) -> dict[str, TableFacts]:
    """Connect, read server facts and grants (and on the source, table facts)."""
    info = SideReport(side)
    report.sides[side] = info
    try:
        settings = database_settings(side, environ)
        info.url, info.database = redact_url(settings.url), settings.database
    except ConfigError as error:
        message = redact(str(error), secret_values(environ))
        report.findings.append(Finding(side, "settings", "fail", message))
        return {}
    info.settings = settings
    for name, path in (
        ("SSL_CA", settings.ssl_ca),
        ("SSL_CERT", settings.ssl_cert),
        ("SSL_KEY", settings.ssl_key),
    ):
        if path and not Path(path).is_file():
            report.findings.append(
                Finding(side, "tls", "fail", f"{side.upper()}_DB_{name}: no such file {path!r}")
            )
    probe = dataclasses.replace(
        settings, connect_timeout=CONNECT_TIMEOUT_SECONDS, pool_size=1, max_overflow=0
    )
    if settings.dialect == "duckdb":
        _check_duckdb_target(settings, info, report)
        return {}
    engine = create_engine(probe, local_infile=side == "target")
    if settings.dialect == "postgresql":
        try:
            _check_postgres_target(engine, settings, info, tables, report)
        finally:
            engine.dispose()
        return {}
    try:
        with engine.connect() as conn:
            facts = read_server_facts(conn)
            info.connected = True
            info.version = facts.version
            info.tls = f"{facts.tls_version} {facts.tls_cipher}".strip() or "off"
            report.findings.append(
                Finding(side, "connection", "ok", f"{info.url} (server {facts.version})")
            )
            report.findings.extend(tls_findings(side, settings, facts))
            grants = parse_grants(facts.grant_lines)
            table_names = [cfg.table for cfg in tables]
            report.findings.extend(grant_findings(side, grants, settings.database, table_names))
            if side == "source" and any(cfg.binlog for cfg in tables):
                report.findings.extend(
                    binlog_findings(binlog_variables(conn), grants, runtime, tables)
                )
            if side == "target":
                report.findings.append(
                    Finding(side, "local_infile", "ok", "LOAD DATA LOCAL INFILE allowed")
                    if facts.local_infile
                    else Finding(
                        side,
                        "local_infile",
                        "fail",
                        "the target refuses LOAD DATA LOCAL INFILE: SET GLOBAL local_infile = ON "
                        "(and local_infile=ON in the server's config)",
                    )
                )
                return {}
            return read_table_facts(conn, settings.database, table_names)
    except sa.exc.SQLAlchemyError as error:
        message = error_message(error, settings.secrets)
        code = mysql_error_code(error)
        hint = CONNECTION_HINTS.get(code or 0)
        report.findings.append(
            Finding(
                side,
                "connection",
                "fail",
                f"{info.url}: {message}" + (f": {hint}" if hint else ""),
            )
        )
        return {}
    finally:
        engine.dispose()


def _check_duckdb_target(settings: DatabaseSettings, info: SideReport, report: Report) -> None:
    """A DuckDB target: its directory writable, the file openable for writing now (no other
    process holds it), and DuckDB's version."""
    import duckdb

    path = Path(settings.database).expanduser()
    add = report.findings.append
    directory = path.parent if path.parent != Path("") else Path(".")
    if not directory.exists() or not os.access(directory, os.W_OK):
        add(Finding("target", "file", "fail",
                    f"{directory}: no such directory, or not writable (the copy goes in {path})"))  # fmt: skip
        return
    try:
        with duckdb.connect(str(path)) as conn:
            version = str(conn.execute("SELECT version()").fetchone()[0])  # type: ignore[index]
    except duckdb.Error as error:
        add(Finding("target", "connection", "fail", f"{path}: {error}"))
        return
    info.connected, info.version, info.tls = True, f"DuckDB {version}", "n/a (a local file)"
    add(Finding("target", "connection", "ok", f"{path} (DuckDB {version}), writable"))


POSTGRES_MIN_VERSION = 14  # bit_xor() over bigint, which the checks' digests need
POSTGRES_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")


def _check_postgres_target(
    engine: sa.Engine,
    settings: DatabaseSettings,
    info: SideReport,
    tables: Sequence[TableConfig],
    report: Report,
) -> None:
    """A PostgreSQL target: reachable, recent enough, UTF8, and allowed to create and write
    the tables in each schema tables.json names (or the connection's current schema)."""
    add = report.findings.append
    try:
        with engine.connect() as conn:
            version_num = int(conn.exec_driver_sql("SHOW server_version_num").scalar_one())
            version = str(conn.exec_driver_sql("SHOW server_version").scalar_one())
            encoding = str(conn.exec_driver_sql("SHOW server_encoding").scalar_one())
            tls = conn.exec_driver_sql(
                "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl"
            ).one_or_none()
            info.connected, info.version = True, version
            info.tls = f"{tls[0]} {tls[1]}" if tls else "off"
            add(Finding("target", "connection", "ok", f"{info.url} (PostgreSQL {version})"))
            if version_num < POSTGRES_MIN_VERSION * 10000:
                add(Finding("target", "version", "fail",
                            f"PostgreSQL {version}: the checks need {POSTGRES_MIN_VERSION} or"
                            " newer (bit_xor)"))  # fmt: skip
            if encoding.upper() != "UTF8":
                add(Finding("target", "encoding", "fail",
                            f"database encoding {encoding}: utf8mb4 text (4-byte characters)"
                            " needs a UTF8 database (CREATE DATABASE ... ENCODING 'UTF8')"))  # fmt: skip
            if settings.ssl is not None and tls is None:
                add(Finding("target", "tls", "fail", "TLS is configured but not in use"))
            current = str(conn.exec_driver_sql("SELECT current_schema()").scalar_one() or "")
            schemas = sorted({cfg.target_schema or current for cfg in tables} or {current})
            for schema in schemas:
                add(_postgres_schema_finding(conn, schema, tables, current))
    except sa.exc.SQLAlchemyError as error:
        message = error_message(error, settings.secrets)
        add(Finding("target", "connection", "fail", f"{info.url}: {message}"))


def _postgres_schema_finding(
    conn: sa.Connection, schema: str, tables: Sequence[TableConfig], current: str
) -> Finding:
    exists = conn.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema}
    ).scalar_one()
    if not exists:
        can_create = conn.execute(
            sa.text("SELECT has_database_privilege(current_database(), 'CREATE')")
        ).scalar_one()
        if can_create:
            return Finding("target", "privileges", "ok",
                           f"schema {schema!r} does not exist yet; the first sync creates it")  # fmt: skip
        return Finding("target", "privileges", "fail",
                       f"schema {schema!r} does not exist and this user may not create it:"
                       f" CREATE SCHEMA {schema} (or GRANT CREATE ON DATABASE to the user)")  # fmt: skip
    allowed = conn.execute(
        sa.text("SELECT has_schema_privilege(:s, 'USAGE'), has_schema_privilege(:s, 'CREATE')"),
        {"s": schema},
    ).one()
    if not all(allowed):
        return Finding("target", "privileges", "fail",
                       f"schema {schema!r}: this user needs USAGE and CREATE on it:"
                       f" GRANT USAGE, CREATE ON SCHEMA {schema} TO <user>")  # fmt: skip
    lacking = []
    for cfg in tables:
        if (cfg.target_schema or current) != schema:
            continue
        name = f'"{schema}"."{cfg.target}"'
        if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is None:
            continue
        for privilege in POSTGRES_TABLE_PRIVILEGES:
            if not conn.execute(
                sa.text("SELECT has_table_privilege(:n, :p)"), {"n": name, "p": privilege}
            ).scalar_one():
                lacking.append(f"{privilege} on {cfg.target}")
    if lacking:
        return Finding("target", "privileges", "fail",
                       f"schema {schema!r}: missing {', '.join(lacking)}")  # fmt: skip
    return Finding("target", "privileges", "ok",
                   f"schema {schema!r}: may create tables and write the synced ones")  # fmt: skip


def _same_database(report: Report) -> Finding | None:
    source, target = (report.sides.get(s) for s in ("source", "target"))
    if not (source and target and source.settings and target.settings):
        return None
    a, b = source.settings.url, target.settings.url
    if source.settings.dialect != target.settings.dialect:
        return None
    if (a.host, a.port or 3306, a.database) == (b.host, b.port or 3306, b.database):
        return Finding(
            "config",
            "databases",
            "fail",
            "SOURCE and TARGET name the same database: the sync would overwrite its own tables",
        )
    return None


def diagnose(config_path: str | None = None, environ: Mapping[str, str] | None = None) -> Report:
    """Run every check; never raises for a problem it can describe."""
    env = environment(environ)
    started = time.perf_counter()
    path = config_path or env.get("TABLES_CONFIG") or "tables.json"
    report = Report(config_path=path)
    tables: list[TableConfig] = []
    try:
        tables = load_tables_config(path)
        report.findings.append(Finding("config", "tables", "ok", f"{path}: {len(tables)} table(s)"))
    except ConfigError as error:
        report.findings.append(Finding("config", "tables", "fail", str(error)))
    settings = Settings()
    try:
        settings = Settings.from_environ(env)
        report.findings.append(
            Finding("config", "environment", "ok", f"INTERVAL {settings.interval} s")
        )
    except ConfigError as error:
        report.findings.append(Finding("config", "environment", "fail", str(error)))

    source_facts = _check_side("source", env, tables, report, settings)
    _check_side("target", env, tables, report, settings)
    same = _same_database(report)
    if same:
        report.findings.append(same)

    source = report.sides["source"]
    for cfg in tables:
        facts = source_facts.get(cfg.table)
        row: dict[str, Any] = {"table": cfg.table, "target_table": cfg.target, "mode": cfg.mode}
        if facts is None:  # the source could not be read: its failure is already reported
            row.update(status="unknown", findings=[])
        else:
            found = preflight(cfg, facts, source.database)
            report.findings.extend(found)
            row.update(
                exists=facts.exists,
                estimated_rows=facts.rows,
                bytes=facts.bytes,
                recommended_mode=recommend_mode(facts.rows, facts.bytes) if facts.exists else None,
                incremental=cfg.incremental,
                status=worst(f.status for f in found),
                findings=[f.as_dict() for f in found if f.status != "ok"],
            )
        report.tables.append(row)
    report.seconds = time.perf_counter() - started
    return report


# -- output --------------------------------------------------------------------------------
_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def format_human(report: Report) -> str:
    lines: list[str] = []
    for scope in ("config", "source", "target"):
        found = [f for f in report.findings if f.scope == scope]
        if not found:
            continue
        lines.append(scope)
        for f in found:
            message = f.message.replace("\n", "\n" + " " * 22)  # continuation lines aligned
            lines.append(f"  {_MARK[f.status]}  {f.check:<12}  {message}")
    if report.tables:
        lines.append("tables")
        header = ("table", "est. rows", "size", "mode", "advice", "status")
        rows = [header]
        for t in report.tables:
            rows.append(
                (
                    t["table"],
                    "-" if t.get("estimated_rows") is None else f"{t['estimated_rows']:,}",
                    human_bytes(t.get("bytes")),
                    t["mode"],
                    t.get("recommended_mode") or "-",
                    t["status"],
                )
            )
        lines += text_table(rows, right={1, 2}, indent="  ")
        for f in report.findings:
            if f.scope not in ("config", "source", "target") and f.status != "ok":
                lines.append(f"  {_MARK[f.status]}  {f.scope}: {f.check}: {f.message}")
    problems = [f for f in report.findings if f.status != "ok"]
    counts = {s: sum(f.status == s for f in problems) for s in ("fail", "warn")}
    lines.append(
        f"{report.verdict}: {counts['fail']} failure(s), {counts['warn']} warning(s) "
        f"in {report.seconds:.1f}s (exit {report.exit_code})"
    )
    return "\n".join(lines)


def format_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, default=str)
