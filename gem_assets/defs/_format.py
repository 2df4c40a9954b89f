"""Small formatting helpers for materialization metadata."""

from __future__ import annotations

__all__ = ["markdown_table"]


def markdown_table(df, max_cell: int = 80) -> str:
    """A small polars DataFrame as a Markdown table (cells escaped and truncated)."""
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        cells = ["" if v is None else str(v).replace("|", "\\|").replace("\n", " ")[:max_cell] for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
