"""Builds the next FAISS index version from the embeddings partitions, incrementally.

A build starts from the version ``CURRENT`` names (when it was built for the same model) and
reads only the embeddings partition files that appeared or changed since that version; the
version's ``state.json`` remembers the fingerprint of every file it consumed. Each document
is one vector whatever the number of partitions it was found in; the manifest keeps the union
of its topics and partitions. The latest fetch of a document decides its text, and a retracted
or deleted row fetched after it removes it. Documents older than the retention window leave.

Builders are serialised by a lock file, and each one re-reads ``CURRENT`` once it holds the
lock, so two builders never publish versions that miss each other's updates.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medkb_assets.embeddings.cache import (
    file_sha256,
    list_embeddings_partitions,
    model_embeddings_dir,
    read_embeddings_partition,
    read_model_dimension,
)
from medkb_assets.index.store import (
    INDEX_FILE,
    LOCK_FILE,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    STATE_FILE,
    SUMMARY_FILE,
    PublishHook,
    load_index_folder,
    next_version_name,
    prune_versions,
    publish_version,
    read_current_version,
    read_version_state,
    remove_leftovers,
    stored_vectors,
)
from medkb_assets.index.verify import verify_index
from medkb_assets.storage import DataLayout

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

IndexType = Literal["auto", "flat", "hnsw"]
INDEX_TYPES: tuple[IndexType, ...] = ("auto", "flat", "hnsw")
# "auto" searches exactly up to this many vectors. Beyond it a flat scan alone (about 14 ms for
# 100,000 x 384 float32 on two cores, bound by memory bandwidth) leaves no room for the query
# embedding within a 15 ms budget, so the index becomes an HNSW graph.
AUTO_EXACT_LIMIT = 50_000
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 96
DEFAULT_LOCK_TIMEOUT_S = 900.0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class BuildStats:
    """What one build did.

    Attributes:
        version: the version ``CURRENT`` names after the build (the new one when ``changed``).
        parent_version: the version the build started from, None for a fresh lineage.
        vectors: vectors in that version.
        added: documents new to the index.
        replaced: documents whose text changed, re-embedded under the same vector id.
        removed: documents that left (retracted, deleted, dropped or past retention).
        model_id: the embedding model of the index.
        index_type: ``flat`` or ``hnsw``.
        build_seconds: wall time, lock wait included.
        partitions_consumed: embeddings partition files read by this build.
        changed: whether a new version was published.
        partitions_read: ``(partition key, sha256 of its embeddings file)`` for each file read,
            the data versions this build took in.
    """

    version: str
    parent_version: str | None
    vectors: int
    added: int
    replaced: int
    removed: int
    model_id: str
    index_type: str
    build_seconds: float
    partitions_consumed: int
    changed: bool
    partitions_read: tuple[tuple[str, str], ...] = ()


@dataclass
class _Lineage:
    """The version a build starts from, as mutable in-memory state."""

    version: str | None
    records: dict[str, dict[str, Any]]
    index: Any  # faiss.IndexIDMap2, or None for a fresh lineage
    index_type: str | None
    dimension: int | None
    consumed: dict[str, dict[str, Any]]
    next_vector_id: int
    tombstones: dict[str, dt.datetime]


@dataclass
class _Changes:
    records: dict[str, dict[str, Any]]
    tombstones: dict[str, dt.datetime]
    pending: dict[str, np.ndarray] = field(default_factory=dict)
    dimension: int | None = None


def build_index(
    layout: DataLayout,
    model_id: str,
    retention_days: int,
    today: dt.date,
    index_type: IndexType = "auto",
    keep_versions: int = 5,
    *,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    publish_hook: PublishHook | None = None,
) -> BuildStats:
    """Publishes the next index version if the embeddings or the retention window changed it.

    Args:
        layout: the data directory layout.
        model_id: the embedding model whose partitions to index; an index built for another
            model is not reused, the build starts a fresh lineage.
        retention_days: documents dated (Entrez date, else publication date) before
            ``today - retention_days`` leave the index.
        today: the day retention is measured from.
        index_type: ``flat`` (exact inner product), ``hnsw`` (approximate), or ``auto``: exact
            up to ``AUTO_EXACT_LIMIT`` vectors, HNSW beyond.
        keep_versions: versions kept on disk; ``CURRENT``'s is never deleted.
        lock_timeout_s: how long to wait for another builder to finish.
        publish_hook: called with each publish step name (see ``store.PUBLISH_STEPS``).

    Returns:
        What the build did; ``changed`` is False when nothing new was published.

    Raises:
        FileNotFoundError: no embeddings exist for ``model_id``, so no index can be built.
        filelock.Timeout: another builder held the lock for longer than ``lock_timeout_s``.
    """
    from filelock import FileLock

    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, not {index_type!r}")
    if keep_versions < 1:
        raise ValueError("keep_versions must be at least 1")
    started = time.perf_counter()
    index_dir = layout.index_dir
    index_dir.mkdir(parents=True, exist_ok=True)

    with FileLock(str(index_dir / LOCK_FILE), timeout=lock_timeout_s):
        remove_leftovers(index_dir)
        current, summary, state = _read_current(index_dir, model_id)
        consumed, to_read, dropped = _scan_partitions(layout, model_id, state.get("consumed", {}))
        cutoff = today - dt.timedelta(days=retention_days)
        requested = index_type
        if current is not None:
            wanted = resolve_index_type(requested, int(summary.get("vectors", 0)))
            unchanged_input = not to_read and not dropped and not _anything_expires(state, cutoff)
            if summary.get("index_type") == wanted and unchanged_input:
                return _unchanged(current, summary, model_id, started)

        lineage = _load_lineage(index_dir, current, summary, state)
        changes = _apply_partitions(lineage, layout, model_id, to_read, dropped)
        _apply_retention(changes, cutoff)
        concrete_type = resolve_index_type(requested, len(changes.records))
        if current is not None and not _differs(lineage, changes, concrete_type):
            return _unchanged(current, summary, model_id, started, len(to_read))

        dimension = changes.dimension or lineage.dimension or read_model_dimension(layout, model_id)
        if dimension is None:
            raise FileNotFoundError(
                f"no embeddings for model {model_id} under "
                f"{model_embeddings_dir(layout, model_id)}: materialize the embeddings asset first"
            )
        added, replaced, removed = _count_changes(lineage.records, changes.records)
        next_vector_id = _assign_vector_ids(changes.records, lineage.next_vector_id)
        index = _next_faiss_index(lineage, changes, concrete_type, dimension)

        version = next_version_name(index_dir)
        summary = {
            "version": version,
            "parent_version": lineage.version,
            "model_id": model_id,
            "dimension": dimension,
            "metric": "ip",
            "index_type": concrete_type,
            "vectors": int(index.ntotal),
            "added": added,
            "replaced": replaced,
            "removed": removed,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        state = _builder_state(model_id, next_vector_id, consumed, changes)

        def write_files(folder: Path) -> None:
            _write_version_files(folder, index, changes.records, summary, state)

        publish_version(
            index_dir,
            version,
            write_files,
            hook=publish_hook,
            verify=lambda folder: verify_index(load_index_folder(folder, version), None),
        )
        prune_versions(index_dir, keep_versions)

    stats = BuildStats(
        version=version,
        parent_version=lineage.version,
        vectors=int(index.ntotal),
        added=added,
        replaced=replaced,
        removed=removed,
        model_id=model_id,
        index_type=concrete_type,
        build_seconds=time.perf_counter() - started,
        partitions_consumed=len(to_read),
        changed=True,
        partitions_read=_data_versions(consumed, model_embeddings_dir(layout, model_id), to_read),
    )
    logger.info(
        "index %s: %d vectors (+%d, ~%d, -%d) from %d partitions in %.2fs",
        version,
        stats.vectors,
        added,
        replaced,
        removed,
        stats.partitions_consumed,
        stats.build_seconds,
    )
    return stats


def _unchanged(
    version: str, summary: dict[str, Any], model_id: str, started: float, consumed: int = 0
) -> BuildStats:
    logger.info("index %s already up to date for %s", version, model_id)
    return BuildStats(
        version=version,
        parent_version=version,
        vectors=int(summary["vectors"]),
        added=0,
        replaced=0,
        removed=0,
        model_id=model_id,
        index_type=str(summary["index_type"]),
        build_seconds=time.perf_counter() - started,
        partitions_consumed=consumed,
        changed=False,
    )


def _builder_state(
    model_id: str, next_vector_id: int, consumed: dict[str, dict[str, Any]], changes: _Changes
) -> dict[str, Any]:
    """Returns what the next build needs to continue from a version (its ``state.json``)."""
    dates = [_document_date(record) for record in changes.records.values()]
    known_dates = [date for date in dates if date is not None]
    return {
        "model_id": model_id,
        "next_vector_id": next_vector_id,
        "oldest_document_date": min(known_dates).isoformat() if known_dates else None,
        "consumed": consumed,
        "tombstones": {
            doc_id: moment.isoformat() for doc_id, moment in sorted(changes.tombstones.items())
        },
    }


def _read_current(
    index_dir: Path, model_id: str
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """Returns the current version, its summary and builder state; only the name when the
    version belongs to another model (the build then starts a fresh lineage)."""
    version = read_current_version(index_dir)
    if version is None:
        return None, {}, {}
    summary = json.loads((index_dir / version / SUMMARY_FILE).read_text(encoding="utf-8"))
    if summary.get("model_id") != model_id:
        logger.info(
            "index %s was built for %s, not %s: starting a fresh index",
            version,
            summary.get("model_id"),
            model_id,
        )
        return None, {}, {}
    return version, summary, read_version_state(index_dir, version)


def _anything_expires(state: dict[str, Any], cutoff: dt.date) -> bool:
    oldest = state.get("oldest_document_date", "")
    if oldest is None:
        return False
    return not oldest or dt.date.fromisoformat(oldest) < cutoff


def _load_lineage(
    index_dir: Path, version: str | None, summary: dict[str, Any], state: dict[str, Any]
) -> _Lineage:
    import faiss

    if version is None:
        return _Lineage(None, {}, None, None, None, {}, 0, {})
    manifest = pq.read_table(index_dir / version / MANIFEST_FILE).to_pylist()
    records = {row["doc_id"]: _normalised_record(row) for row in manifest}
    tombstones = {
        doc_id: dt.datetime.fromisoformat(moment)
        for doc_id, moment in state.get("tombstones", {}).items()
    }
    next_vector_id = max(
        int(state.get("next_vector_id", 0)),
        max((record["vector_id"] + 1 for record in records.values()), default=0),
    )
    return _Lineage(
        version=version,
        records=records,
        index=faiss.read_index(str(index_dir / version / INDEX_FILE)),
        index_type=summary.get("index_type"),
        dimension=summary.get("dimension"),
        consumed=dict(state.get("consumed", {})),
        next_vector_id=next_vector_id,
        tombstones=tombstones,
    )


def _normalised_record(row: dict[str, Any]) -> dict[str, Any]:
    record = {name: row.get(name) for name in MANIFEST_COLUMNS}
    record["topics"] = tuple(sorted(set(record["topics"] or ())))
    record["partitions"] = tuple(sorted(set(record["partitions"] or ())))
    record["retracted"] = False
    record["fetched_at"] = record["fetched_at"] or _EPOCH
    return record


def _scan_partitions(
    layout: DataLayout, model_id: str, consumed: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[Path], list[str]]:
    """Returns the new consumed-file state, the files to read and the partitions that vanished.

    A file whose size and modification time match the record is taken as unchanged without
    reading it; otherwise its sha256 decides, so rewriting identical bytes costs one hash.
    """
    root = model_embeddings_dir(layout, model_id)
    fingerprints: dict[str, dict[str, Any]] = {}
    to_read = []
    for path in list_embeddings_partitions(layout, model_id):
        relative = path.relative_to(root).as_posix()
        status = path.stat()
        known = consumed.get(relative)
        if known and known["size"] == status.st_size and known["mtime_ns"] == status.st_mtime_ns:
            fingerprints[relative] = known
            continue
        sha256 = file_sha256(path)
        fingerprints[relative] = {
            "size": status.st_size,
            "mtime_ns": status.st_mtime_ns,
            "sha256": sha256,
        }
        if not known or known["sha256"] != sha256:
            to_read.append(path)
    dropped = [
        _partition_key(root / relative) for relative in consumed if relative not in fingerprints
    ]
    return fingerprints, to_read, dropped


def _data_versions(
    consumed: dict[str, dict[str, Any]], root: Path, paths: list[Path]
) -> tuple[tuple[str, str], ...]:
    return tuple(
        (_partition_key(path), consumed[path.relative_to(root).as_posix()]["sha256"])
        for path in paths
    )


def _partition_key(path: Path) -> str:
    return f"{path.parent.name}|{path.stem}"


def _apply_partitions(
    lineage: _Lineage, layout: DataLayout, model_id: str, to_read: list[Path], dropped: list[str]
) -> _Changes:
    changes = _Changes(
        records={doc_id: dict(record) for doc_id, record in lineage.records.items()},
        tombstones=dict(lineage.tombstones),
    )
    touched = {*dropped, *(_partition_key(path) for path in to_read)}
    members: dict[str, set[str]] = {key: set() for key in touched}
    for doc_id, record in changes.records.items():
        for partition_key in touched.intersection(record["partitions"]):
            members[partition_key].add(doc_id)

    for partition_key in dropped:
        _drop_partition(changes, partition_key, members[partition_key], keep=set())
    for path in to_read:
        table, vectors = read_embeddings_partition(path)
        if changes.dimension is None:
            changes.dimension = vectors.shape[1]
        elif vectors.shape[1] != changes.dimension:
            raise ValueError(
                f"{path} holds {vectors.shape[1]}-d vectors, expected {changes.dimension}"
            )
        partition_key = _partition_key(path)
        _merge_partition(changes, partition_key, members[partition_key], table, vectors)
    if lineage.dimension and changes.dimension and lineage.dimension != changes.dimension:
        raise ValueError(
            f"embeddings for {model_id} are {changes.dimension}-d but index {lineage.version} is "
            f"{lineage.dimension}-d"
        )
    return changes


def _drop_partition(
    changes: _Changes, partition_key: str, listed: set[str], keep: set[str]
) -> None:
    """Removes a partition from the documents that ``listed`` it, except the ``keep`` doc_ids.

    A document found in no other partition leaves the index.
    """
    topic = partition_key.partition("|")[2]
    for doc_id in listed - keep:
        record = changes.records.get(doc_id)
        if record is None or partition_key not in record["partitions"]:
            continue
        partitions = tuple(p for p in record["partitions"] if p != partition_key)
        if not partitions:
            del changes.records[doc_id]
            continue
        remaining_topics = {p.partition("|")[2] for p in partitions}
        topics = set(record["topics"]) - ({topic} - remaining_topics)
        record["partitions"] = partitions
        record["topics"] = tuple(sorted(topics | remaining_topics))


def _merge_partition(
    changes: _Changes, partition_key: str, listed: set[str], table: pa.Table, vectors: np.ndarray
) -> None:
    """Applies one partition's rows: its live rows add or update documents, its retracted and
    deleted rows remove them, and documents it no longer holds lose it."""
    rows = _latest_row_per_doc(table.to_pylist())
    live = {doc_id for doc_id, (_, row) in rows.items() if not (row["retracted"] or row["deleted"])}
    _drop_partition(changes, partition_key, listed, keep=live)
    topic = partition_key.partition("|")[2]

    for doc_id, (position, row) in rows.items():
        fetched_at = row["fetched_at"] or _EPOCH
        record = changes.records.get(doc_id)

        if row["retracted"] or row["deleted"]:
            if record is not None and fetched_at >= record["fetched_at"]:
                del changes.records[doc_id]
                changes.pending.pop(doc_id, None)
            previous = changes.tombstones.get(doc_id)
            changes.tombstones[doc_id] = max(previous, fetched_at) if previous else fetched_at
            continue

        tombstone = changes.tombstones.get(doc_id)
        if tombstone is not None and tombstone >= fetched_at:
            continue
        changes.tombstones.pop(doc_id, None)

        if record is None:
            record = {"vector_id": None, "partitions": (), "topics": (), "fetched_at": _EPOCH}
            record["content_hash"] = None
            changes.records[doc_id] = record
        if fetched_at >= record["fetched_at"]:
            if row["content_hash"] != record["content_hash"]:
                changes.pending[doc_id] = vectors[position]
            _take_row_fields(record, row)
        record["partitions"] = tuple(sorted({*record["partitions"], partition_key}))
        record["topics"] = tuple(sorted({*record["topics"], *(row["topics"] or ()), topic}))


def _latest_row_per_doc(rows: list[dict[str, Any]]) -> dict[str, tuple[int, dict[str, Any]]]:
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for position, row in enumerate(rows):
        kept = latest.get(row["doc_id"])
        if kept is None or (row["fetched_at"] or _EPOCH) >= (kept[1]["fetched_at"] or _EPOCH):
            latest[row["doc_id"]] = (position, row)
    return latest


def _take_row_fields(record: dict[str, Any], row: dict[str, Any]) -> None:
    fields = ("doc_id", "content_hash", "source", "source_id", "title", "url", "published")
    for name in (*fields, "entrez_date"):
        record[name] = row[name]
    record["retracted"] = False
    record["fetched_at"] = row["fetched_at"] or _EPOCH


def _apply_retention(changes: _Changes, cutoff: dt.date) -> None:
    for doc_id in list(changes.records):
        document_date = _document_date(changes.records[doc_id])
        if document_date is not None and document_date < cutoff:
            del changes.records[doc_id]
    changes.pending = {
        doc_id: vector for doc_id, vector in changes.pending.items() if doc_id in changes.records
    }


def _document_date(record: dict[str, Any]) -> dt.date | None:
    return _parse_date(record["entrez_date"]) or _parse_date(record["published"])


def _parse_date(value: str | None) -> dt.date | None:
    """Reads ``YYYY-MM-DD``, ``YYYY-MM`` or ``YYYY`` (sources vary); a partial date means its
    first day."""
    if not value:
        return None
    parts = value.strip()[:10].split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 and parts[1] else 1
        day = int(parts[2]) if len(parts) > 2 and parts[2] else 1
        return dt.date(year, month, day)
    except (ValueError, IndexError):
        logger.warning("unreadable document date %r: kept regardless of retention", value)
        return None


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    # A refetch of identical text is not worth a new version, so fetch times are left out.
    return {name: value for name, value in record.items() if name != "fetched_at"}


def resolve_index_type(requested: str, vectors: int) -> str:
    """The concrete index type for a requested one: ``auto`` picks by corpus size."""
    if requested != "auto":
        return requested
    return "flat" if vectors <= AUTO_EXACT_LIMIT else "hnsw"


def _differs(lineage: _Lineage, changes: _Changes, index_type: str) -> bool:
    if lineage.index_type != index_type or changes.pending:
        return True
    if changes.records.keys() != lineage.records.keys():
        return True
    return any(
        _comparable(record) != _comparable(lineage.records[doc_id])
        for doc_id, record in changes.records.items()
    )


def _count_changes(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> tuple[int, int, int]:
    added = sum(1 for doc_id in after if doc_id not in before)
    removed = sum(1 for doc_id in before if doc_id not in after)
    replaced = sum(
        1
        for doc_id, record in after.items()
        if doc_id in before and record["content_hash"] != before[doc_id]["content_hash"]
    )
    return added, replaced, removed


def _assign_vector_ids(records: dict[str, dict[str, Any]], next_vector_id: int) -> int:
    """Gives new documents the next ids in doc_id order; returns the next free id."""
    for doc_id in sorted(
        doc_id for doc_id, record in records.items() if record["vector_id"] is None
    ):
        records[doc_id]["vector_id"] = next_vector_id
        next_vector_id += 1
    return next_vector_id


def _next_faiss_index(lineage: _Lineage, changes: _Changes, index_type: str, dimension: int) -> Any:
    import faiss

    wanted = {record["vector_id"]: doc_id for doc_id, record in changes.records.items()}
    base = lineage.index
    stale: list[int] = []
    if base is not None:
        base_ids = faiss.vector_to_array(base.id_map)
        stale = [
            int(vector_id)
            for vector_id in base_ids
            if int(vector_id) not in wanted or wanted[int(vector_id)] in changes.pending
        ]
    new_ids = np.array(
        sorted(changes.records[doc_id]["vector_id"] for doc_id in changes.pending), dtype=np.int64
    )
    by_id = {changes.records[doc_id]["vector_id"]: doc_id for doc_id in changes.pending}
    new_vectors = (
        np.stack([changes.pending[by_id[int(i)]] for i in new_ids]) if len(new_ids) else None
    )

    index: Any
    if base is not None and lineage.index_type == "flat" and index_type == "flat":
        index = base
        if stale:
            index.remove_ids(np.array(stale, dtype=np.int64))
    else:
        index = _empty_index(index_type, dimension)
        if base is not None:
            kept_ids, kept_vectors = stored_vectors(base)
            keep = ~np.isin(kept_ids, np.array(stale, dtype=np.int64))
            if keep.any():
                index.add_with_ids(kept_vectors[keep], kept_ids[keep])
    if new_vectors is not None:
        index.add_with_ids(np.ascontiguousarray(new_vectors, dtype=np.float32), new_ids)
    return index


def _empty_index(index_type: str, dimension: int) -> Any:
    import faiss

    inner: Any
    if index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        inner = faiss.IndexFlatIP(dimension)
    return faiss.IndexIDMap2(inner)


def _write_version_files(
    folder: Path,
    index: faiss.Index,
    records: dict[str, dict[str, Any]],
    summary: dict[str, Any],
    state: dict[str, Any],
) -> None:
    import faiss

    faiss.write_index(index, str(folder / INDEX_FILE))
    rows = sorted(records.values(), key=lambda record: record["vector_id"])
    manifest = pa.Table.from_pylist(
        [{name: _manifest_value(record, name) for name in MANIFEST_COLUMNS} for record in rows],
        schema=MANIFEST_SCHEMA,
    )
    pq.write_table(manifest, folder / MANIFEST_FILE, compression="zstd")
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")


def _manifest_value(record: dict[str, Any], name: str) -> Any:
    value = record.get(name)
    return list(value) if isinstance(value, tuple) else value
