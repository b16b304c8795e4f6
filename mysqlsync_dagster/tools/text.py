"""Plain-text tables, as the CLI, doctor and the benchmark print them."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def text_table(
    rows: Sequence[Sequence[object]], right: Collection[int] = (), indent: str = ""
) -> list[str]:
    """Columns padded to their widest cell (the first row is the header); columns whose index
    is in `right` (figures) are right-aligned."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(
            str(cell).rjust(widths[i]) if i in right else str(cell).ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
