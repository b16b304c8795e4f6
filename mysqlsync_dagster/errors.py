"""Every exception type of the package, and the rule that says which failures are worth a retry.

This module is the bottom of the import graph (standard library only), so that nothing has to
import the sync, the loader or the checks just to raise, catch or classify an error, and the
connectorx reader child (`pipeline/source_stream.py`) can import it without pulling in anything.

Classification (`is_retryable`):

- transient: lost connection (2006, 2013, ...), lock wait timeout (1205), deadlock (1213), too
  many connections, a restarting server, a pool exhausted for `POOL_TIMEOUT`, the connectorx
  reader losing its connection, a concurrent sync of the same table, a check that could not
  reach a database: the same work can succeed a moment later;
- permanent: everything else (unknown table or column, access denied, a certificate that does
  not verify, bad configuration, a bug): a retry would fail the same way.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus


class ConfigError(ValueError):
    """tables.json or the environment is not valid; the message says where and why."""


class SchemaError(RuntimeError):
    """A configured table, key or column does not match the database."""


class SyncError(RuntimeError):
    """A table's sync failed; the message is safe to show (no secrets)."""


class TableBusy(SyncError):
    """Another sync of the same target table holds its lock; trying later can succeed."""


class BinlogPurged(SchemaError):
    """A binlog table's stored position is gone from the source's binlog (a retry cannot help)."""


class SourceRestarted(SyncError):
    """The source server restarted while the run read it: what was read may have been cut
    short without an error (connectorx can end a result early when the server dies), so the
    run is not committed; trying again reads it whole."""


class LoadError(RuntimeError):
    """The target refused or altered data; nothing of the failing batch was kept."""


class ReadTimeout(TimeoutError):
    """The source sent nothing for `DB_READ_TIMEOUT` seconds (a stalled network or server)."""


class SourceReadError(RuntimeError):
    """The child reading the source failed; the message is its error ("<type>: <message>")."""


class ConnectionFailure(RuntimeError):
    """A database could not be reached or refused us; the message says which and what to do."""


class CheckError(RuntimeError):
    """The tables cannot be compared; the message says why (no secrets)."""


class TransientCheckError(RuntimeError):
    """A post-sync check could not reach a database; the step is retried rather than judged."""


# MySQL/MariaDB error codes worth retrying: the same statement can succeed a moment later.
TRANSIENT_ERROR_CODES = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout exceeded
        1213,  # deadlock found
        1927,  # connection was killed (MariaDB)
        2003,  # can't connect (server restarting)
        2006,  # server has gone away
        2013,  # lost connection during query
        2014,  # commands out of sync after a broken connection
        2055,  # lost connection (SSL)
        4031,  # disconnected by the server because of inactivity
    }
)
_TRANSIENT_TEXT = re.compile(
    r"Lost connection|server has gone away|Connection refused|Broken pipe|Connection reset|"
    r"Deadlock found|Lock wait timeout|QueuePool limit|"
    # connectorx (Rust driver) losing its connection mid-read; its reader process reports it
    # as "PanicException: cx writer failed: Source(MySQLError(IoError { server disconnected }))"
    r"bytes remaining on stream|CodecError \{ IO error|IoError \{|server disconnected|"
    r"read timed out",
    re.IGNORECASE,
)
# PostgreSQL SQLSTATEs worth retrying (a PostgreSQL target): connection exceptions (08...),
# serialization failure, deadlock, lock not available, shutdown or start-up in progress, too
# many connections
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})
_TRANSIENT_POSTGRES_TEXT = re.compile(
    r"server closed the connection unexpectedly|could not connect to server|"
    r"terminating connection|connection to server at .* failed|SSL SYSCALL error|"
    r"connection already closed|cursor already closed|"
    # a DuckDB file another process has open for writing (another run's)
    r"Could not set lock on file",
    re.IGNORECASE,
)
# TLS failures arrive as "can't connect" (2003) but will fail the same way every time.
_PERMANENT_TEXT = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed")
# connectorx's reader reports server errors as text: "... ERROR 1927 (70100): ..."
_RUST_DRIVER_CODE = re.compile(r"\bERROR (\d{4}) \(\w{5}\)")

# What to check for the commonest connection errors, by MySQL error number.
CONNECTION_HINTS = {
    1044: "the user may not use this database",
    1045: "check the user and password",
    1049: "the database does not exist",
    1698: "check the user and password",
    2003: "is the server running and the host/port right?",
    2005: "is the host name right?",
}


def error_chain(error: BaseException) -> list[BaseException]:
    """The error, what it wraps (`orig`), and what caused it, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException) and orig not in chain:
            chain.append(orig)
        current = current.__cause__ or current.__context__
    return chain


def mysql_error_code(error: BaseException) -> int | None:
    """The MySQL error number behind a (possibly wrapped) driver exception, if any: PyMySQL's
    first argument, or the "ERROR 1927 (70100)" in the text connectorx's reader reports."""
    chain = error_chain(error)
    for candidate in chain:
        if candidate.args and isinstance(candidate.args[0], int):
            return candidate.args[0]
    for candidate in chain:
        found = _RUST_DRIVER_CODE.search(str(candidate))
        if found:
            return int(found.group(1))
    return None


def _is_pool_timeout(error: BaseException) -> bool:
    """SQLAlchemy's pool gave no connection within `pool_timeout` (checked by name so that
    this module imports no driver)."""
    kind = type(error)
    return kind.__name__ == "TimeoutError" and kind.__module__.startswith("sqlalchemy")


def is_transient(error: BaseException) -> bool:
    """True for database errors where trying again later is the right response."""
    if any(_PERMANENT_TEXT.search(str(e)) for e in error_chain(error)):
        return False
    if _is_pool_timeout(error):
        return True
    for cause in error_chain(error):
        sqlstate = getattr(cause, "pgcode", None)
        if sqlstate:
            return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    if any(_TRANSIENT_POSTGRES_TEXT.search(str(e)) for e in error_chain(error)):
        return True
    code = mysql_error_code(error)
    if code == 0 and any(type(e).__name__ == "InterfaceError" for e in error_chain(error)):
        return True  # PyMySQL's (0, '') on a connection the server closed (KILL, a restart)
    if code is not None:
        return code in TRANSIENT_ERROR_CODES
    return bool(_TRANSIENT_TEXT.search(str(error)))


def is_retryable(error: BaseException) -> bool:
    """Whether a failed table run can succeed if retried (see the module docstring)."""
    return isinstance(error, TableBusy | SourceRestarted | TransientCheckError) or is_transient(
        error
    )


# A failed table run is retried up to RETRIES times; the n-th wait is (2**n - 1) times
# RETRY_DELAY_SECONDS, +/- RETRY_DELAY_SECONDS of jitter: about 10 s, 30 s, 70 s and 150 s, which
# cover a server restart or a failover without holding a failed run for long. (Dagster's
# exponential backoff with plus-minus jitter, `orchestration/retries.py`; the CLI's runs without
# Dagster wait the same, `retry_wait`.)
RETRIES = 4
RETRY_DELAY_SECONDS = 10.0


def retry_wait(attempt: int, delay: float) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...) with a first wait `delay`."""
    return max(0.0, (2**attempt - 1) * delay + (2 * random.random() - 1) * delay)


def failure_message(table: str, error: BaseException, secrets: Iterable[str]) -> tuple[str, bool]:
    """What to say when syncing `table` failed with `error` (free of secrets), and whether a
    retry can help."""
    retryable = is_retryable(error)
    message = redact(user_message(error), secrets)
    if not message.startswith(f"table {table!r}"):
        message = f"table {table!r}: {message}"
    if retryable:
        message += " (transient: retried with backoff)"
    else:
        message += " (permanent: not retried; fix the cause and re-run)"
    return message, retryable


def user_message(error: BaseException) -> str:
    """The message to show for `error`: our own errors speak for themselves, others are named."""
    own = (SchemaError, SyncError)
    return str(error) if isinstance(error, own) else f"{type(error).__name__}: {error}"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove every secret, raw or URL-encoded, from a message."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return text
