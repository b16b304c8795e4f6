"""The table asset's checks in Dagster's terms: specs, results, and the post-sync run of them.

The comparisons themselves are `verify/compare.py`; here they become `dg.AssetCheckSpec`s
declared with the asset and `dg.AssetCheckResult`s whose metadata explains the verdict.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.verify.outcome import (
    BLOCKING_CHECKS,
    CHECKSUM_MATCH,
    ROW_COUNT_MATCH,
    SOURCE_ROW_COUNT,
    CheckOutcome,
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
        severity=dg.AssetCheckSeverity.WARN if outcome.warning else dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={k: metadata_value(v) for k, v in outcome.metadata.items()},
    )
