"""Documents partitions built from real PubMedQA abstracts, for embedding and index tests."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medkb_assets.documents.schema import DOCUMENT_SCHEMA
from medkb_assets.storage import DataLayout, PartitionRef

PUBMEDQA_PATH = Path(__file__).parents[1] / "fixtures" / "pubmedqa" / "pqal_dev.json"
FETCHED_AT = dt.datetime(2026, 11, 3, 6, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Abstract:
    """One PubMedQA record: its PMID, question (used as the title) and joined contexts."""

    pmid: str
    title: str
    text: str
    year: str


@cache
def pubmedqa_abstracts() -> tuple[Abstract, ...]:
    """Returns the 500 PubMedQA records, in PMID order."""
    records = json.loads(PUBMEDQA_PATH.read_text(encoding="utf-8"))
    return tuple(
        Abstract(pmid, record["QUESTION"], " ".join(record["CONTEXTS"]), record["YEAR"])
        for pmid, record in sorted(records.items())
    )


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()


def document_row(
    abstract: Abstract,
    partition: PartitionRef,
    *,
    text: str | None = None,
    retracted: bool = False,
    deleted: bool = False,
    fetched_at: dt.datetime = FETCHED_AT,
    entrez_date: str | None = None,
) -> dict[str, Any]:
    """Returns a ``documents`` row for ``abstract`` as found in ``partition``."""
    body = abstract.text if text is None else text
    return {
        "doc_id": f"pubmed:{abstract.pmid}",
        "source": "pubmed",
        "source_id": abstract.pmid,
        "title": abstract.title,
        "text": body,
        "url": f"https://pubmed.ncbi.nlm.nih.gov/{abstract.pmid}/",
        "published": abstract.year,
        "entrez_date": entrez_date or partition.date,
        "topics": [partition.topic],
        "journal": None,
        "authors": [],
        "mesh_terms": [],
        "keywords": [],
        "doi": None,
        "pmcid": None,
        "language": "eng",
        "publication_types": ["Journal Article"],
        "retracted": retracted,
        "deleted": deleted,
        "content_hash": content_hash(abstract.title, body),
        "fetched_at": fetched_at,
        "partition": partition.key,
        "raw_path": None,
    }


def write_documents(layout: DataLayout, partition: PartitionRef, rows: list[dict]) -> Path:
    """Writes a documents Parquet file for ``partition`` and returns its path."""
    path = layout.documents_path(partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), path)
    return path
