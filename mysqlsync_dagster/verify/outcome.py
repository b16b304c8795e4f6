"""The checks' names and verdicts: what the definitions need of the checks, without the
comparison machinery (`compare.py`) or its imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SOURCE_ROW_COUNT = "source_row_count"
ROW_COUNT_MATCH = "row_count_match"
CHECKSUM_MATCH = "checksum_match"
BLOCKING_CHECKS = frozenset({ROW_COUNT_MATCH, CHECKSUM_MATCH})


@dataclass
class CheckOutcome:
    """One check's verdict: plain values, turned into an `AssetCheckResult` or a CLI line."""

    check: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # A failure that is a warning, not an error: reported, never blocking.
    warning: bool = False
    # The check could not run for a passing reason (lost connection, timeout): no verdict.
    transient_error: bool = False

    @property
    def blocking(self) -> bool:
        return self.check in BLOCKING_CHECKS and not self.warning
