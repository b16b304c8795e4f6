"""One retry policy for every table asset, and the rule that decides which failures use it.

Dagster's `RetryPolicy` retries whatever an op raises, so the table asset turns every error into
a `dg.Failure` whose `allow_retries` says whether trying again can help:

- transient (lost connection 2006/2013, lock wait timeout 1205, deadlock 1213, pool timeout, a
  concurrent sync of the same table, see `db.is_transient`): retried with exponential backoff and
  jitter, up to `RETRY_POLICY.max_retries` times, then the run fails;
- anything else (unknown table or column, access denied, bad config, a bug): fails at once with
  the reason in the message, since a retry would fail the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import dagster as dg

from mysqlsync_dagster.db import is_transient, redact
from mysqlsync_dagster.pipeline.run import SyncError, TableBusy
from mysqlsync_dagster.schema import SchemaError
from mysqlsync_dagster.verify.checks import TransientCheckError

# Waits of about 10 s, 30 s, 70 s, 150 s (each +/- 10 s of jitter) cover a server restart or a
# failover without holding a failed run for long.
RETRY_POLICY = dg.RetryPolicy(
    max_retries=4, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def retry_policy(environ: Mapping[str, str] | None = None) -> dg.RetryPolicy:
    """`RETRY_POLICY`, or as many retries (`SYNC_RETRIES`) with a first wait
    (`SYNC_RETRY_DELAY` seconds) as the environment asks for, e.g. none for a one-shot CLI run."""
    env = os.environ if environ is None else environ
    if not (env.get("SYNC_RETRIES") or env.get("SYNC_RETRY_DELAY")):
        return RETRY_POLICY
    return dg.RetryPolicy(
        max_retries=int(env.get("SYNC_RETRIES") or RETRY_POLICY.max_retries),
        delay=float(env.get("SYNC_RETRY_DELAY") or RETRY_POLICY.delay or 0),
        backoff=RETRY_POLICY.backoff,
        jitter=RETRY_POLICY.jitter,
    )


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, TableBusy | TransientCheckError) or is_transient(error)


def sync_failure(table: str, error: BaseException, secrets: Iterable[str]) -> dg.Failure:
    """The `dg.Failure` to raise for `error` while syncing `table` (message free of secrets)."""
    retryable = is_retryable(error)
    known = isinstance(error, SchemaError | SyncError)  # messages written for the user
    message = redact(str(error) if known else f"{type(error).__name__}: {error}", secrets)
    if not message.startswith(f"table {table!r}"):
        message = f"table {table!r}: {message}"
    if retryable:
        message += " (transient: retried with backoff)"
    else:
        message += " (permanent: not retried; fix the cause and re-run)"
    return dg.Failure(
        description=message,
        metadata={"table": table, "retryable": retryable},
        allow_retries=retryable,
    )
