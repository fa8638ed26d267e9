"""Tracing one document through medkb, and summarising what the current index holds.

:func:`audit_document` answers an auditor's questions about one ``doc_id``: which partitions
and raw fetches it came from (with fetch times and request parameters), how its content hash
changed over time, which index versions contained it, and whether and when it was retracted,
deleted or dropped from the index. :func:`collect_stats` summarises the current index.

Only files are read: ``documents/*/*.parquet`` (filtered by ``doc_id`` inside Arrow, never
loaded whole), the raw fetch folders of the partitions the document appears in, and the
manifests of the index versions still on disk.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from medkb_assets.config import MedkbConfig
from medkb_assets.documents.cleaning import clean_text, content_hash
from medkb_assets.documents.schema import DOCUMENT_SCHEMA
from medkb_assets.index.store import (
    MANIFEST_FILE,
    SUMMARY_FILE,
    list_versions,
    read_current_version,
)
from medkb_assets.operations.health import latest_partition_dates_from_files
from medkb_assets.sources.raw_store import FETCH_FILE, ITEMS_FILE, LATEST_FILE
from medkb_assets.storage import DataLayout, PartitionRef

logger = logging.getLogger(__name__)

_DOCUMENT_COLUMNS = [
    "doc_id",
    "source",
    "source_id",
    "title",
    "topics",
    "retracted",
    "deleted",
    "content_hash",
    "fetched_at",
    "partition",
    "raw_path",
]
_MANIFEST_COLUMNS = ["doc_id", "vector_id", "content_hash", "topics", "partitions", "fetched_at"]


@dataclass
class FetchRecord:
    """One raw fetch folder of a partition, as its ``fetch.json`` describes it.

    Attributes:
        folder: the fetch folder, relative to the data directory.
        fetched_at: when the fetch started (ISO, UTC).
        latest: whether ``latest.json`` of the partition points at this fetch.
        parameters: the request parameters; for PubMed, those of the response file that held
            the document when it is known.
        query: the search query or keyword list the source was asked with, if recorded.
        mode: how the source was read (``eutils``, ``files``), if recorded.
    """

    folder: str
    fetched_at: str | None
    latest: bool
    parameters: list[dict[str, Any]] = field(default_factory=list)
    query: str | None = None
    mode: str | None = None


@dataclass
class PartitionAppearance:
    """The document's row in one ``documents`` partition file."""

    partition: str
    source: str
    source_id: str
    title: str
    topics: list[str]
    content_hash: str
    fetched_at: str | None
    retracted: bool
    deleted: bool
    documents_path: str
    raw_path: str | None
    fetch: FetchRecord | None


@dataclass
class RawObservation:
    """What one raw fetch held for the document, re-derived from the stored bytes.

    Attributes:
        source: the source.
        partition: the partition fetched.
        folder: the fetch folder, relative to the data directory.
        fetched_at: when it was fetched.
        present: whether the fetch held the document at all.
        content_hash: the hash its title and text give, None when absent or deleted.
        retracted: PubMed marked it retracted in this fetch.
        deleted: NLM deleted the citation in this fetch.
    """

    source: str
    partition: str
    folder: str
    fetched_at: str | None
    present: bool
    content_hash: str | None = None
    retracted: bool = False
    deleted: bool = False


@dataclass
class IndexAppearance:
    """Whether one index version held the document, and as what."""

    version: str
    created_at: str | None
    current: bool
    contains: bool
    vector_id: int | None = None
    content_hash: str | None = None
    topics: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)


@dataclass
class ContentVersion:
    """One distinct content hash of the document and where it was seen."""

    content_hash: str
    first_fetched_at: str | None
    last_fetched_at: str | None
    seen_in: list[str] = field(default_factory=list)


@dataclass
class DocumentAudit:
    """Everything medkb's files say about one document."""

    doc_id: str
    appearances: list[PartitionAppearance] = field(default_factory=list)
    raw_history: list[RawObservation] = field(default_factory=list)
    content_versions: list[ContentVersion] = field(default_factory=list)
    index_versions: list[IndexAppearance] = field(default_factory=list)
    index_changes: list[dict[str, Any]] = field(default_factory=list)
    retracted: dict[str, Any] | None = None
    deleted: dict[str, Any] | None = None
    removed_from_index: dict[str, Any] | None = None

    @property
    def found(self) -> bool:
        return bool(self.appearances or any(v.contains for v in self.index_versions))

    @property
    def partitions(self) -> list[str]:
        return [appearance.partition for appearance in self.appearances]

    @property
    def versions_containing(self) -> list[str]:
        return [version.version for version in self.index_versions if version.contains]

    def to_dict(self) -> dict[str, Any]:
        """Returns the audit as plain JSON-ready data."""
        return {
            "doc_id": self.doc_id,
            "found": self.found,
            "partitions": self.partitions,
            "index_versions_containing": self.versions_containing,
            "retracted": self.retracted,
            "deleted": self.deleted,
            "removed_from_index": self.removed_from_index,
            "appearances": [asdict(appearance) for appearance in self.appearances],
            "content_versions": [asdict(version) for version in self.content_versions],
            "raw_history": [asdict(observation) for observation in self.raw_history],
            "index_versions": [asdict(version) for version in self.index_versions],
            "index_changes": self.index_changes,
        }


def audit_document(layout: DataLayout, doc_id: str, *, raw_history: bool = True) -> DocumentAudit:
    """Traces one document through the documents partitions, raw fetches and index versions.

    Args:
        layout: the data directory layout.
        doc_id: the document, e.g. ``pubmed:38123456``.
        raw_history: also re-derive the document's content hash from every raw fetch of the
            partitions it appears in (parses those responses; slower on large partitions).

    Returns:
        The audit; ``found`` is False when no file mentions the document.
    """
    audit = DocumentAudit(doc_id=doc_id)
    audit.appearances = _partition_appearances(layout, doc_id)
    if raw_history:
        audit.raw_history = _raw_history(layout, audit.appearances)
    audit.index_versions = _index_appearances(layout, doc_id)
    audit.content_versions = _content_versions(audit)
    audit.index_changes = _index_changes(audit.index_versions)
    audit.retracted = _first_flagged(audit, "retracted")
    audit.deleted = _first_flagged(audit, "deleted")
    removals = [change for change in audit.index_changes if change["change"] == "removed"]
    if removals and not (audit.index_versions and audit.index_versions[-1].contains):
        audit.removed_from_index = removals[-1]
    return audit


def _partition_appearances(layout: DataLayout, doc_id: str) -> list[PartitionAppearance]:
    files = sorted(str(path) for path in layout.documents_dir.glob("*/*.parquet"))
    if not files:
        return []
    dataset = ds.dataset(files, format="parquet", schema=DOCUMENT_SCHEMA)
    table = dataset.to_table(columns=_DOCUMENT_COLUMNS, filter=pc.field("doc_id") == doc_id)
    appearances = []
    for row in table.to_pylist():
        partition = PartitionRef.parse(row["partition"])
        raw_path = row["raw_path"]
        appearances.append(
            PartitionAppearance(
                partition=row["partition"],
                source=row["source"],
                source_id=row["source_id"],
                title=row["title"],
                topics=list(row["topics"] or []),
                content_hash=row["content_hash"],
                fetched_at=_iso(row["fetched_at"]),
                retracted=bool(row["retracted"]),
                deleted=bool(row["deleted"]),
                documents_path=layout.documents_path(partition).relative_to(layout.root).as_posix(),
                raw_path=raw_path,
                fetch=_fetch_of(layout, raw_path),
            )
        )
    appearances.sort(key=lambda item: (item.partition, item.fetched_at or ""))
    return appearances


def _fetch_of(layout: DataLayout, raw_path: str | None) -> FetchRecord | None:
    """Reads the fetch record of the folder ``raw_path`` is (or lies in)."""
    if not raw_path:
        return None
    target = layout.root / raw_path
    folder = target if target.is_dir() else target.parent
    record = _read_json(folder / FETCH_FILE)
    if record is None:
        return None
    return _fetch_record(layout, folder, record, file_name=None if target.is_dir() else target.name)


def _fetch_record(
    layout: DataLayout, folder: Path, record: dict[str, Any], file_name: str | None
) -> FetchRecord:
    entries = [entry for entry in record.get("files", []) if isinstance(entry, dict)]
    if file_name is not None:
        matching = [entry for entry in entries if entry.get("file") == file_name]
        entries = matching or entries
    parameters = [dict(entry["request"]) for entry in entries if entry.get("request")]
    if not parameters and isinstance(record.get("request"), dict):
        parameters = [dict(record["request"])]
    query = record.get("query")
    if query is None and record.get("keywords"):
        query = "keywords: " + ", ".join(record["keywords"])
    latest = _read_json(folder.parent / LATEST_FILE) or {}
    relative = folder.relative_to(layout.root).as_posix()
    return FetchRecord(
        folder=relative,
        fetched_at=record.get("fetched_at"),
        latest=latest.get("folder") == relative,
        parameters=parameters,
        query=query,
        mode=record.get("mode"),
    )


def _raw_history(
    layout: DataLayout, appearances: list[PartitionAppearance]
) -> list[RawObservation]:
    observations = []
    seen: set[tuple[str, str]] = set()
    for appearance in appearances:
        key = (appearance.source, appearance.partition)
        if key in seen:
            continue
        seen.add(key)
        partition = PartitionRef.parse(appearance.partition)
        source_id = appearance.source_id
        partition_dir = layout.raw_dir(appearance.source, partition)
        if not partition_dir.is_dir():
            continue
        for folder in sorted(path for path in partition_dir.iterdir() if path.is_dir()):
            record = _read_json(folder / FETCH_FILE)
            if record is None:
                continue
            observation = RawObservation(
                source=appearance.source,
                partition=appearance.partition,
                folder=folder.relative_to(layout.root).as_posix(),
                fetched_at=record.get("fetched_at"),
                present=False,
            )
            if appearance.source == "pubmed":
                _observe_pubmed(folder, record, source_id, observation)
            else:
                _observe_items(folder, source_id, observation)
            observations.append(observation)
    observations.sort(key=lambda item: (item.fetched_at or "", item.folder))
    return observations


def _observe_pubmed(
    folder: Path, record: dict[str, Any], pmid: str, observation: RawObservation
) -> None:
    from medkb_assets.sources.pubmed.parser import parse_pubmed_xml

    names = [entry["file"] for entry in record.get("files", []) if isinstance(entry, dict)]
    paths = [folder / name for name in names] or sorted(folder.glob("*.xml.gz"))
    best_version = -1
    for path in paths:
        if not path.name.endswith(".xml.gz") or not path.exists():
            continue
        payload = gzip.decompress(path.read_bytes())
        # Parsing a whole response is costly; most responses do not mention the PMID at all.
        if pmid.encode() not in payload:
            continue
        result = parse_pubmed_xml(payload)
        if pmid in result.deleted_pmids:
            observation.present = True
            observation.deleted = True
            observation.content_hash = None
            best_version = 1 << 30
        for pubmed_record in result.records:
            if pubmed_record.pmid != pmid or pubmed_record.version <= best_version:
                continue
            best_version = pubmed_record.version
            observation.present = True
            observation.retracted = pubmed_record.retracted
            observation.content_hash = content_hash(
                clean_text(pubmed_record.title), clean_text(pubmed_record.abstract)
            )


def _observe_items(folder: Path, source_id: str, observation: RawObservation) -> None:
    path = folder / ITEMS_FILE
    if not path.exists():
        return
    for item in json.loads(gzip.decompress(path.read_bytes())):
        if str(item.get("source_id")) != source_id:
            continue
        observation.present = True
        observation.content_hash = content_hash(
            clean_text(item.get("title")), clean_text(item.get("text"))
        )


def _index_appearances(layout: DataLayout, doc_id: str) -> list[IndexAppearance]:
    index_dir = layout.index_dir
    current = read_current_version(index_dir)
    appearances = []
    for version in list_versions(index_dir):
        manifest_path = index_dir / version / MANIFEST_FILE
        if not manifest_path.exists():
            continue
        summary = _read_json(index_dir / version / SUMMARY_FILE) or {}
        table = pq.read_table(
            manifest_path, columns=_MANIFEST_COLUMNS, filters=[("doc_id", "==", doc_id)]
        )
        appearance = IndexAppearance(
            version=version,
            created_at=summary.get("created_at"),
            current=version == current,
            contains=table.num_rows > 0,
        )
        if table.num_rows:
            row = table.slice(0, 1).to_pylist()[0]
            appearance.vector_id = row["vector_id"]
            appearance.content_hash = row["content_hash"]
            appearance.topics = list(row["topics"] or [])
            appearance.partitions = list(row["partitions"] or [])
        appearances.append(appearance)
    return appearances


def _content_versions(audit: DocumentAudit) -> list[ContentVersion]:
    versions: dict[str, ContentVersion] = {}

    def note(digest: str | None, fetched_at: str | None, where: str) -> None:
        if not digest:
            return
        version = versions.setdefault(digest, ContentVersion(digest, fetched_at, fetched_at))
        if fetched_at:
            version.first_fetched_at = min(filter(None, [version.first_fetched_at, fetched_at]))
            version.last_fetched_at = max(filter(None, [version.last_fetched_at, fetched_at]))
        if where not in version.seen_in:
            version.seen_in.append(where)

    for observation in audit.raw_history:
        if observation.present and not observation.deleted:
            note(observation.content_hash, observation.fetched_at, f"raw:{observation.folder}")
    for appearance in audit.appearances:
        if not appearance.deleted:
            note(
                appearance.content_hash, appearance.fetched_at, f"documents:{appearance.partition}"
            )
    for version in audit.index_versions:
        if version.contains:
            note(version.content_hash, None, f"index:{version.version}")
    return sorted(
        versions.values(), key=lambda item: (item.first_fetched_at or "~", item.content_hash)
    )


def _index_changes(versions: list[IndexAppearance]) -> list[dict[str, Any]]:
    changes = []
    previous: IndexAppearance | None = None
    for version in versions:
        change = None
        # The oldest version on disk has nothing to compare with: older ones were pruned.
        if previous is not None and version.contains != previous.contains:
            change = "added" if version.contains else "removed"
        elif previous is not None and version.contains:
            if previous.content_hash != version.content_hash:
                change = "updated"
        if change:
            changes.append(
                {
                    "version": version.version,
                    "created_at": version.created_at,
                    "change": change,
                    "previous_version": previous.version if previous else None,
                }
            )
        previous = version
    return changes


def _first_flagged(audit: DocumentAudit, flag: str) -> dict[str, Any] | None:
    moments = [
        (appearance.fetched_at or "", f"documents:{appearance.partition}")
        for appearance in audit.appearances
        if getattr(appearance, flag)
    ]
    moments += [
        (observation.fetched_at or "", f"raw:{observation.folder}")
        for observation in audit.raw_history
        if getattr(observation, flag)
    ]
    if not moments:
        return None
    fetched_at, where = min(moments)
    return {"first_seen_fetched_at": fetched_at or None, "seen_in": where}


@dataclass
class KnowledgeBaseStats:
    """What the current index holds, and how current each topic's documents are.

    Attributes:
        index_version: the version ``CURRENT`` names, None before the first build.
        index_summary: that version's ``summary.json``.
        vectors: documents in it.
        by_topic: documents per topic (a document under two topics counts in both).
        by_source: documents per source.
        by_topic_and_source: documents per topic, then per source.
        last_update: the newest ``documents`` partition day of each topic, None if none.
        documents_partitions: ``documents`` partition files per topic.
    """

    index_version: str | None
    index_summary: dict[str, Any]
    vectors: int
    by_topic: dict[str, int]
    by_source: dict[str, int]
    by_topic_and_source: dict[str, dict[str, int]]
    last_update: dict[str, str | None]
    documents_partitions: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """Returns the statistics as plain JSON-ready data."""
        return asdict(self)


def collect_stats(layout: DataLayout, config: MedkbConfig | None = None) -> KnowledgeBaseStats:
    """Summarises the current index and the documents partitions on disk.

    Args:
        layout: the data directory layout.
        config: when given, every configured topic is listed even if it has no documents.

    Returns:
        The statistics; counts are empty before the first index build.
    """
    version = read_current_version(layout.index_dir)
    summary: dict[str, Any] = {}
    by_topic: dict[str, int] = {}
    by_source: dict[str, int] = {}
    by_topic_and_source: dict[str, dict[str, int]] = {}
    vectors = 0
    if version is not None:
        folder = layout.index_dir / version
        summary = _read_json(folder / SUMMARY_FILE) or {}
        manifest = pq.read_table(folder / MANIFEST_FILE, columns=["doc_id", "source", "topics"])
        vectors = manifest.num_rows
        by_source = _value_counts(manifest.column("source"))
        exploded = _explode_topics(manifest)
        by_topic = _value_counts(exploded.column("topic"))
        for row in (
            exploded.group_by(["topic", "source"]).aggregate([("doc_id", "count")]).to_pylist()
        ):
            by_topic_and_source.setdefault(row["topic"], {})[row["source"]] = row["doc_id_count"]

    latest = latest_partition_dates_from_files(layout)
    partitions: dict[str, int] = {}
    for path in layout.documents_dir.glob("*/*.parquet") if layout.documents_dir.is_dir() else []:
        partitions[path.stem] = partitions.get(path.stem, 0) + 1
    topics = sorted(set(latest) | set(by_topic) | set(config.topics if config else ()))
    return KnowledgeBaseStats(
        index_version=version,
        index_summary=summary,
        vectors=vectors,
        by_topic={topic: by_topic.get(topic, 0) for topic in topics},
        by_source=dict(sorted(by_source.items())),
        by_topic_and_source={
            topic: dict(sorted(by_topic_and_source.get(topic, {}).items())) for topic in topics
        },
        last_update={topic: latest.get(topic) for topic in topics},
        documents_partitions={topic: partitions.get(topic, 0) for topic in topics},
    )


def _explode_topics(manifest: pa.Table) -> pa.Table:
    topics = manifest.column("topics").combine_chunks()
    parents = pc.list_parent_indices(topics)
    return pa.table(
        {
            "doc_id": pc.take(manifest.column("doc_id"), parents),
            "source": pc.take(manifest.column("source"), parents),
            "topic": pc.list_flatten(topics),
        }
    )


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column.combine_chunks())
    return {
        str(item["values"]): int(item["counts"])
        for item in counts.to_pylist()
        if item["values"] is not None
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return str(value)
