"""The table asset's checks in Dagster's terms: specs, results, and the post-sync run of them.

The comparisons themselves are `verify/compare.py`; here they become `dg.AssetCheckSpec`s
declared with the asset and `dg.AssetCheckResult`s whose metadata explains the verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import sqlalchemy as sa

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.errors import TransientCheckError
from mysqlsync_dagster.pipeline.windows import ModifierWindow
from mysqlsync_dagster.verify.compare import (
    BLOCKING_CHECKS,
    CHECKSUM_MATCH,
    ROW_COUNT_MATCH,
    SOURCE_ROW_COUNT,
    CheckOutcome,
    table_checks,
)

_DESCRIPTIONS = {
    SOURCE_ROW_COUNT: "The source table is reachable; its row count (and max modifier) before "
    "extraction.",
    ROW_COUNT_MATCH: "Target row count equals the source's (incremental tables: within the "
    "synced cursor).",
    CHECKSUM_MATCH: "Source and target agree row for row: COUNT(*) and BIT_XOR(CRC32(row)) per "
    "primary-key range, computed by each server; differing keys are listed.",
}


def table_check_specs(cfg: TableConfig, asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    names = [SOURCE_ROW_COUNT, ROW_COUNT_MATCH] + ([CHECKSUM_MATCH] if cfg.checksum else [])
    return [
        dg.AssetCheckSpec(
            name,
            asset=asset_key,
            description=_DESCRIPTIONS[name],
            blocking=name in BLOCKING_CHECKS,
        )
        for name in names
    ]


def metadata_value(value: Any) -> dg.MetadataValue:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, list | dict):
        return dg.MetadataValue.json(value)
    return dg.MetadataValue.text(str(value))


def check_result(outcome: CheckOutcome, asset_key: dg.AssetKey) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=outcome.check,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={k: metadata_value(v) for k, v in outcome.metadata.items()},
    )


def post_sync_check_results(
    cfg: TableConfig,
    asset_key: dg.AssetKey,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    pre_sync: CheckOutcome | None,
    window: ModifierWindow | None = None,
) -> Iterator[dg.AssetCheckResult]:
    """The asset's check results, yielded after its materialization (`pre_sync`: the
    `source_row_count` outcome taken before extraction, unless already reported)."""
    outcomes = table_checks(cfg, source_engine, target_engine, window)
    errored = [o for o in outcomes if o.transient_error]
    if errored:
        raise TransientCheckError(
            f"check {errored[0].check} could not run: {errored[0].description}"
        )
    if pre_sync is not None:
        yield check_result(pre_sync, asset_key)
    for outcome in outcomes:
        yield check_result(outcome, asset_key)
