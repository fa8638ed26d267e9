"""Small helpers for the Markdown tables materializations carry as metadata."""

from __future__ import annotations


def markdown_cell(text: str | None, limit: int = 120) -> str:
    """Text safe inside a Markdown table cell: one line, shortened, pipes escaped.

    Partition keys (``2026-11-02|diabetes``) and some titles hold a ``|``, which Markdown would
    read as a cell border.
    """
    return (text or "").replace("\n", " ")[:limit].replace("|", "\\|")
