"""How often each table syncs: INTERVAL as a cron, a table's own cron, and what follows from it.

Pure functions, no Dagster: schedules, sensors and freshness policies are built from these.

Cron has a one-minute resolution and its steps must divide the hour or the day evenly, so an
`INTERVAL` maps to a cron like this (the cadence is never slower than asked):

| INTERVAL (seconds)                       | cron               | runs every      |
|------------------------------------------|--------------------|-----------------|
| under 60                                 | `* * * * *`        | minute          |
| m minutes, m divides 60                  | `*/m * * * *`      | m minutes       |
| other values under an hour               | `*/d * * * *`      | d = largest divisor of 60 below m |
| h hours, h divides 24                    | `0 */h * * *`      | h hours         |
| other values under a day                 | `0 */d * * *`      | d = largest divisor of 24 below h |
| one day or more                          | `0 0 * * *`        | day             |

Seconds are rounded down to whole minutes (whole hours above an hour) first.
"""

from __future__ import annotations

import datetime as dt
import functools

from croniter import croniter

from mysqlsync_dagster.config import TableConfig

_MINUTE_STEPS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)  # divisors of 60
_HOUR_STEPS = (1, 2, 3, 4, 6, 8, 12)  # divisors of 24
_REFERENCE = dt.datetime(2024, 1, 1)  # fixed start, so a cron's spacing is deterministic
_MAX_TICKS = 500
_SPAN = dt.timedelta(days=35)


def interval_cron(interval_seconds: int) -> str:
    """The cron closest to `interval_seconds` that runs at least that often (see module doc)."""
    minutes = interval_seconds // 60
    if minutes < 60:
        step = max((s for s in _MINUTE_STEPS if s <= minutes), default=1)
        return "* * * * *" if step == 1 else f"*/{step} * * * *"
    hours = minutes // 60
    if hours < 24:
        step = max(s for s in _HOUR_STEPS if s <= hours)
        return "0 * * * *" if step == 1 else f"0 */{step} * * *"
    return "0 0 * * *"


def table_cron(cfg: TableConfig, interval_seconds: int) -> str:
    """The table's own `schedule`, else the cron for INTERVAL."""
    return cfg.schedule or interval_cron(interval_seconds)


@functools.lru_cache(maxsize=256)
def cron_max_gap_seconds(cron: str) -> float:
    """The longest time between two consecutive ticks of `cron` (over up to five weeks)."""
    ticks = croniter(cron, _REFERENCE)
    previous = ticks.get_next(dt.datetime)
    longest = 0.0
    for _ in range(_MAX_TICKS):
        current = ticks.get_next(dt.datetime)
        longest = max(longest, (current - previous).total_seconds())
        if current - _REFERENCE > _SPAN:
            break
        previous = current
    return longest


def cadence_seconds(cfg: TableConfig, interval_seconds: int) -> float:
    """Longest expected wait between two syncs of the table.

    A `schedule` cron gives its longest gap (a weekday-only cron waits over the weekend); without
    one, INTERVAL itself, or the cron it maps to when that is slower (under a minute).
    """
    if cfg.schedule:
        return cron_max_gap_seconds(cfg.schedule)
    return max(float(interval_seconds), cron_max_gap_seconds(interval_cron(interval_seconds)))


def freshness_minutes(cfg: TableConfig, interval_seconds: int) -> float:
    """`freshness_minutes` from tables.json, else twice the table's cadence."""
    return cfg.freshness_minutes or 2 * cadence_seconds(cfg, interval_seconds) / 60
