"""What an index version holds, summarised for the people reading its materialization."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pandas as pd

from medkb_assets.index.store import MANIFEST_FILE
from medkb_assets.markdown import markdown_cell

SPARK_BARS = "▁▂▃▄▅▆▇█"
CHART_DAYS = 30
NEW_DOCUMENT_ROWS = 10


def read_manifest(index_dir: Path, version: str | None) -> pd.DataFrame | None:
    """The manifest of one version, or None when there is no such version."""
    if version is None:
        return None
    path = index_dir / version / MANIFEST_FILE
    return pd.read_parquet(path) if path.exists() else None


def new_documents_table(current: pd.DataFrame, parent: pd.DataFrame | None) -> str:
    """A Markdown table of the newest documents this version added, most recent first."""
    known = set() if parent is None else set(parent["doc_id"])
    dated = current.assign(date=_dates(current))
    added = dated[~dated["doc_id"].isin(known)]
    if added.empty:
        return "_no new documents_"
    added = added.sort_values("date", ascending=False).head(NEW_DOCUMENT_ROWS)
    rows = [
        f"| {date or ''} | {source} | [{markdown_cell(title)}]({url}) | {', '.join(topics)} |"
        for date, source, title, url, topics in zip(
            added["date"],
            added["source"],
            added["title"],
            added["url"],
            added["topics"],
            strict=True,
        )
    ]
    return "\n".join(["| date | source | title | topics |", "| --- | --- | --- | --- |", *rows])


def counts_table(manifest: pd.DataFrame) -> str:
    """A Markdown table of documents per topic and source."""
    exploded = manifest[["topics", "source"]].explode("topics").dropna()
    counts = pd.crosstab(exploded["topics"], exploded["source"])
    counts["total"] = counts.sum(axis=1)
    return str(counts.rename_axis("topic").to_markdown())


def documents_per_day_chart(manifest: pd.DataFrame, today: dt.date) -> str:
    """One sparkline per topic of documents by day over the last month, as Markdown."""
    first_day = today - dt.timedelta(days=CHART_DAYS - 1)
    days = pd.date_range(first_day, today, freq="D").date
    dated = manifest.assign(day=pd.to_datetime(_dates(manifest), errors="coerce").dt.date)
    recent = dated[dated["day"] >= first_day].explode("topics")
    rows = []
    for topic, group in recent.groupby("topics"):
        per_day = group["day"].value_counts().reindex(days, fill_value=0)
        rows.append(f"| {topic} | `{_sparkline(per_day.tolist())}` | {int(per_day.sum())} |")
    if not rows:
        return f"_no documents dated {first_day} to {today}_"
    header = [f"| topic | {first_day} → {today} | documents |", "| --- | --- | --- |"]
    return "\n".join([*header, *rows])


def _dates(manifest: pd.DataFrame) -> pd.Series:
    return manifest["entrez_date"].fillna(manifest["published"])


def _sparkline(values: list[int]) -> str:
    peak = max(values) or 1
    return "".join(
        " " if value == 0 else SPARK_BARS[math.ceil(value / peak * len(SPARK_BARS)) - 1]
        for value in values
    )
