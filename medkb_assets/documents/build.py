"""Turning one partition's raw fetches into cleaned, de-duplicated document rows."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medkb_assets.documents.cleaning import clean_text, content_hash
from medkb_assets.documents.schema import DOCUMENT_COLUMNS, DOCUMENT_SCHEMA
from medkb_assets.sources.base import SourceDocument
from medkb_assets.sources.pubmed.parser import PubmedRecord, parse_pubmed_xml
from medkb_assets.sources.raw_store import (
    ITEMS_FILE,
    SUCCEEDED,
    payload_paths,
    read_attempt,
    read_latest,
)
from medkb_assets.storage import DataLayout, PartitionRef, atomic_write_bytes

logger = logging.getLogger(__name__)

PUBMED_URL = "https://pubmed.ncbi.nlm.nih.gov/{pmid}/"


@dataclass
class SourceOutcome:
    """What one source contributed to a partition's documents."""

    source: str
    status: str  # ok | unavailable | not_fetched | disabled
    rows: int = 0
    without_text: int = 0
    skipped: int = 0
    error: str | None = None
    fetched_at: str | None = None  # the fetch the rows come from
    failed_at: str | None = None  # the last attempt, when it failed


@dataclass
class PartitionDocuments:
    """A partition's document rows and how each source fared."""

    frame: pd.DataFrame
    outcomes: list[SourceOutcome] = field(default_factory=list)

    @property
    def missing_sources(self) -> list[str]:
        """Sources whose last attempt failed or that were never fetched for the partition."""
        return [o.source for o in self.outcomes if o.status in ("unavailable", "not_fetched")]


def build_partition_documents(
    layout: DataLayout, partition: PartitionRef, sources: Iterable[str]
) -> PartitionDocuments:
    """Reads the latest raw fetch of every enabled source and returns the partition's rows.

    Args:
        layout: the data directory layout.
        partition: the partition to build.
        sources: the sources enabled for the partition's topic.
    """
    rows: list[dict[str, Any]] = []
    outcomes = []
    for source in sources:
        outcome = SourceOutcome(source=source, status="not_fetched")
        record = read_latest(layout, source, partition)
        attempt = read_attempt(layout, source, partition)
        if record is not None:
            outcome.status = record.get("status", "ok")
            outcome.fetched_at = record["fetched_at"]
            if outcome.status == "ok":
                source_rows = _read_source_rows(layout, partition, source, record, outcome)
                outcome.rows = len(source_rows)
                rows.extend(source_rows)
        if attempt is not None and attempt.get("status", "ok") not in SUCCEEDED:
            # The last attempt failed: the rows above, if any, come from an earlier fetch.
            outcome.status = "unavailable"
            outcome.error = attempt.get("error")
            outcome.failed_at = attempt["fetched_at"]
        outcomes.append(outcome)

    frame = pd.DataFrame(rows, columns=[*DOCUMENT_COLUMNS, "_version"])
    frame = _deduplicate(frame)
    return PartitionDocuments(frame=frame, outcomes=outcomes)


def _read_source_rows(
    layout: DataLayout,
    partition: PartitionRef,
    source: str,
    record: dict[str, Any],
    outcome: SourceOutcome,
) -> list[dict[str, Any]]:
    fetched_at = dt.datetime.fromisoformat(record["fetched_at"])
    raw_folder = record["folder"]
    if source == "pubmed":
        return _pubmed_rows(layout, partition, record, fetched_at, raw_folder, outcome)

    items_path = layout.root / raw_folder / ITEMS_FILE
    items = json.loads(gzip.decompress(items_path.read_bytes()))
    rows = []
    for item in items:
        document = SourceDocument(**{**item, "keywords": tuple(item.get("keywords") or ())})
        row = _source_document_row(document, partition, fetched_at, raw_folder)
        if row is None:
            outcome.without_text += 1
        else:
            rows.append(row)
    return rows


def _pubmed_rows(
    layout: DataLayout,
    partition: PartitionRef,
    record: dict[str, Any],
    fetched_at: dt.datetime,
    raw_folder: str,
    outcome: SourceOutcome,
) -> list[dict[str, Any]]:
    rows = []
    for path in payload_paths(layout, record):
        if not path.name.endswith(".xml.gz"):
            continue
        result = parse_pubmed_xml(gzip.decompress(path.read_bytes()))
        outcome.skipped += result.skipped
        for reason in result.skip_reasons:
            logger.warning("%s: skipped a PubMed record: %s", path.name, reason)
        raw_path = str(path.relative_to(layout.root))
        for pubmed_record in result.records:
            row = _pubmed_row(pubmed_record, partition, fetched_at, raw_path)
            if row is None:
                outcome.without_text += 1
            else:
                rows.append(row)
            # A retraction notice enters PubMed on its own day; the paper it retracts keeps its
            # old Entrez date and is never fetched again, so the notice flags it here.
            rows.extend(
                _tombstone_row(pmid, partition, fetched_at, raw_path, retracted=True)
                for pmid in pubmed_record.retracts_pmids
            )
        rows.extend(
            _tombstone_row(pmid, partition, fetched_at, raw_path) for pmid in result.deleted_pmids
        )
    return rows


def _row(
    source: str,
    source_id: str,
    title: str,
    text: str,
    partition: PartitionRef,
    fetched_at: dt.datetime,
    raw_path: str,
    **fields: Any,
) -> dict[str, Any]:
    """A document row: every list column present, the content hash derived, ``fields`` on top."""
    return {
        "doc_id": f"{source}:{source_id}",
        "source": source,
        "source_id": source_id,
        "title": title,
        "text": text,
        "topics": [partition.topic],
        "authors": [],
        "mesh_terms": [],
        "keywords": [],
        "publication_types": [],
        "retracted": False,
        "deleted": False,
        "content_hash": content_hash(title, text),
        "fetched_at": fetched_at,
        "partition": partition.key,
        "raw_path": raw_path,
        "_version": 0,
        **fields,
    }


def _pubmed_row(
    record: PubmedRecord, partition: PartitionRef, fetched_at: dt.datetime, raw_path: str
) -> dict[str, Any] | None:
    title = clean_text(record.title)
    text = clean_text(record.abstract)
    if not text and not record.retracted:
        # A citation without an abstract has nothing to retrieve by; a retracted one is kept so
        # the index can drop any earlier version of it.
        return None
    return _row(
        "pubmed",
        record.pmid,
        title,
        text,
        partition,
        fetched_at,
        raw_path,
        url=record.url or PUBMED_URL.format(pmid=record.pmid),
        published=record.published,
        entrez_date=record.entrez_date,
        journal=record.journal,
        authors=list(record.authors),
        mesh_terms=list(record.mesh_terms),
        keywords=list(record.keywords),
        doi=record.doi,
        pmcid=record.pmcid,
        language=record.language,
        publication_types=list(record.publication_types),
        retracted=record.retracted,
        _version=record.version,
    )


def _tombstone_row(
    pmid: str,
    partition: PartitionRef,
    fetched_at: dt.datetime,
    raw_path: str,
    retracted: bool = False,
) -> dict[str, Any]:
    """A row that carries no text, only that ``pmid`` was deleted or retracted."""
    return _row(
        "pubmed",
        pmid,
        "",
        "",
        partition,
        fetched_at,
        raw_path,
        url=PUBMED_URL.format(pmid=pmid),
        retracted=retracted,
        deleted=not retracted,
    )


def _source_document_row(
    document: SourceDocument, partition: PartitionRef, fetched_at: dt.datetime, raw_folder: str
) -> dict[str, Any] | None:
    title = clean_text(document.title)
    text = clean_text(document.text)
    if not text or not title:
        return None
    return _row(
        document.source,
        document.source_id,
        title,
        text,
        partition,
        fetched_at,
        raw_folder,
        url=document.url,
        published=document.published,
        mesh_terms=list(document.mesh_terms),
        keywords=list(document.keywords),
        language=document.language,
    )


def _deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per ``doc_id``: a deletion wins, then a retraction, then the highest PubMed
    version, then the last row read."""
    if frame.empty:
        return frame[DOCUMENT_COLUMNS]
    precedence = frame["deleted"].astype(int) * 2 + frame["retracted"].astype(int)
    frame = frame.assign(_order=range(len(frame)), _precedence=precedence)
    frame = frame.sort_values(["_precedence", "_version", "_order"])
    frame = frame.drop_duplicates("doc_id", keep="last").sort_values("_order")
    return frame[DOCUMENT_COLUMNS].reset_index(drop=True)


def write_documents(layout: DataLayout, partition: PartitionRef, frame: pd.DataFrame) -> None:
    """Writes a partition's documents as one Parquet file, atomically."""
    table = pa.Table.from_pandas(frame, schema=DOCUMENT_SCHEMA, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(layout.documents_path(partition), sink.getvalue().to_pybytes())


def read_documents(layout: DataLayout, partition: PartitionRef) -> pd.DataFrame | None:
    """Reads a partition's documents, or None if the partition was never built."""
    path = layout.documents_path(partition)
    if not path.exists():
        return None
    return pq.read_table(path).to_pandas()
