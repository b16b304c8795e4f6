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

from collections.abc import Iterable

import dagster as dg

from mysqlsync_dagster.errors import RETRIES, RETRY_DELAY_SECONDS, failure_message
from mysqlsync_dagster.settings import Settings

# Waits of about 10 s, 30 s, 70 s, 150 s (each +/- 10 s of jitter) cover a server restart or a
# failover without holding a failed run for long (errors.RETRIES).
RETRY_POLICY = dg.RetryPolicy(
    max_retries=RETRIES,
    delay=RETRY_DELAY_SECONDS,
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)


def retry_policy(settings: Settings) -> dg.RetryPolicy:
    """`RETRY_POLICY`, or as many retries (`SYNC_RETRIES`) with a first wait
    (`SYNC_RETRY_DELAY` seconds) as the settings ask for, e.g. none for a one-shot CLI run."""
    if settings.sync_retries is None and settings.sync_retry_delay is None:
        return RETRY_POLICY
    return dg.RetryPolicy(
        max_retries=(
            RETRY_POLICY.max_retries if settings.sync_retries is None else settings.sync_retries
        ),
        delay=(
            RETRY_POLICY.delay if settings.sync_retry_delay is None else settings.sync_retry_delay
        ),
        backoff=RETRY_POLICY.backoff,
        jitter=RETRY_POLICY.jitter,
    )


def sync_failure(table: str, error: BaseException, secrets: Iterable[str]) -> dg.Failure:
    """The `dg.Failure` to raise for `error` while syncing `table` (message free of secrets)."""
    message, retryable = failure_message(table, error, secrets)
    return dg.Failure(
        description=message,
        metadata={"table": table, "retryable": retryable},
        allow_retries=retryable,
    )
