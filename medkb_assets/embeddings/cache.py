"""Vectors for one ``documents`` partition, computed only for text no earlier run has embedded.

Layout under ``<data_dir>/embeddings/<model slug>/`` (one folder per model id, so vectors of
two models never mix)::

    model.json                          model_id and dimension
    vectors.sqlite                      content-hash store: content_hash -> float32 vector
    partitions/<date>/<topic>.parquet   one file per documents partition

A partition file holds one row per document of the partition: the document's identity and the
metadata the index manifest needs, ``retracted`` and ``deleted`` flags, and ``vector``, a
``fixed_size_list<float32>[dimension]`` that is null for retracted and deleted rows (they stay
in the file so the index can drop them). Its Parquet metadata records the sha256 of the
documents file it was made from, so rerunning an unchanged partition does no work at all.

The content-hash store is keyed by the documents' ``content_hash`` (sha256 of title and text),
so the same text met under another topic or another day is embedded once. SQLite serialises
concurrent partition runs and keeps the store consistent across crashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medkb_assets.embeddings.model import EmbeddingModel, document_text
from medkb_assets.storage import DataLayout, PartitionRef, atomic_write_bytes

logger = logging.getLogger(__name__)

MODEL_FILE = "model.json"
STORE_FILE = "vectors.sqlite"
PARTITIONS_DIR = "partitions"
SOURCE_SHA256_KEY = b"medkb.documents_sha256"
MODEL_ID_KEY = b"medkb.model_id"
LIVE_ROWS_KEY = b"medkb.live_rows"

# Columns carried from the documents file into the embeddings file, for the index manifest.
CARRIED_COLUMNS = (
    "doc_id",
    "content_hash",
    "source",
    "source_id",
    "title",
    "url",
    "published",
    "entrez_date",
    "topics",
    "retracted",
    "deleted",
    "fetched_at",
    "partition",
)
_READ_COLUMNS = [*CARRIED_COLUMNS, "text"]
# SQLite caps the number of bound parameters per statement (999 in older builds).
_LOOKUP_CHUNK = 900
_BUSY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class EmbedStats:
    """What one partition run did.

    Attributes:
        embedded: texts run through the model.
        cache_hits: live documents whose vector came from the content-hash store (or from an
            unchanged earlier run of the same partition).
        flagged: retracted or deleted rows, kept without a vector.
        rows: rows in the partition.
        seconds: wall time of the whole run.
        docs_per_second: ``embedded / seconds``, 0 when nothing was embedded.
        model_id: the model the vectors belong to.
        path: the partition's embeddings file.
        skipped_unchanged: the documents file had not changed since the last run.
    """

    embedded: int
    cache_hits: int
    flagged: int
    rows: int
    seconds: float
    docs_per_second: float
    model_id: str
    path: Path
    skipped_unchanged: bool = False


def model_slug(model_id: str) -> str:
    """Returns a folder name for a model id (``org/name@digest`` -> ``org--name@digest``)."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "--", model_id).strip("-.") or "model"


def model_embeddings_dir(layout: DataLayout, model_id: str) -> Path:
    """Returns the folder holding every embeddings file of one model."""
    return layout.embeddings_dir / model_slug(model_id)


def embeddings_partition_path(layout: DataLayout, model_id: str, partition: PartitionRef) -> Path:
    """Returns the embeddings file of one partition for one model."""
    directory = model_embeddings_dir(layout, model_id) / PARTITIONS_DIR / partition.date
    return directory / f"{partition.topic}.parquet"


def list_embeddings_partitions(layout: DataLayout, model_id: str) -> list[Path]:
    """Returns every partition embeddings file of one model, sorted by date then topic."""
    root = model_embeddings_dir(layout, model_id) / PARTITIONS_DIR
    return sorted(root.glob("*/*.parquet"))


def embeddings_schema(dimension: int) -> pa.Schema:
    """Returns the schema of a partition embeddings file for vectors of ``dimension``."""
    from medkb_assets.documents.schema import DOCUMENT_SCHEMA

    fields = [DOCUMENT_SCHEMA.field(name) for name in CARRIED_COLUMNS]
    return pa.schema([*fields, pa.field("vector", pa.list_(pa.float32(), dimension))])


def file_sha256(path: Path) -> str:
    """Returns the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def embed_partition(
    documents_path: Path,
    layout: DataLayout,
    partition: PartitionRef,
    model: EmbeddingModel,
    batch_size: int = 64,
) -> EmbedStats:
    """Writes the embeddings file of one documents partition, embedding only unseen text.

    Args:
        documents_path: the partition's documents Parquet file (``DOCUMENT_SCHEMA``).
        layout: the data directory layout.
        partition: the partition the file belongs to.
        model: the embedding model; its ``model_id`` selects the cache folder.
        batch_size: texts per forward pass.

    Returns:
        Counts and timings of the run.
    """
    started = time.perf_counter()
    output = embeddings_partition_path(layout, model.model_id, partition)
    source_sha256 = file_sha256(documents_path)

    previous = _previous_run(output, source_sha256, model.model_id)
    if previous is not None:
        rows, live = previous
        logger.info("embeddings for %s unchanged (%d documents)", partition.key, rows)
        return EmbedStats(
            embedded=0,
            cache_hits=live,
            flagged=rows - live,
            rows=rows,
            seconds=time.perf_counter() - started,
            docs_per_second=0.0,
            model_id=model.model_id,
            path=output,
            skipped_unchanged=True,
        )

    documents = pq.read_table(documents_path, columns=_READ_COLUMNS)
    flagged = _flagged_mask(documents)
    live_rows = np.flatnonzero(~flagged)
    hashes = documents.column("content_hash").to_pylist()
    live_hashes = list(dict.fromkeys(hashes[row] for row in live_rows))

    model_dir = model_embeddings_dir(layout, model.model_id)
    _write_model_file(model_dir, model)
    with _open_store(model_dir / STORE_FILE) as store:
        known = _lookup(store, live_hashes, model.dimension)
        missing = [content_hash for content_hash in live_hashes if content_hash not in known]
        fresh = _embed_missing(documents, hashes, live_rows, missing, model, batch_size)
        _insert(store, fresh)
    known.update(fresh)

    vectors = np.zeros((documents.num_rows, model.dimension), dtype=np.float32)
    for row in live_rows:
        vectors[row] = known[hashes[row]]
    table = _embeddings_table(documents, vectors, flagged, model.dimension)
    metadata = {
        SOURCE_SHA256_KEY: source_sha256.encode(),
        MODEL_ID_KEY: model.model_id.encode(),
        LIVE_ROWS_KEY: str(len(live_rows)).encode(),
    }
    atomic_write_bytes(output, _parquet_bytes(table.replace_schema_metadata(metadata)))

    seconds = time.perf_counter() - started
    embedded = len(fresh)
    stats = EmbedStats(
        embedded=embedded,
        cache_hits=len(live_rows) - sum(1 for row in live_rows if hashes[row] in fresh),
        flagged=int(flagged.sum()),
        rows=documents.num_rows,
        seconds=seconds,
        docs_per_second=embedded / seconds if embedded and seconds > 0 else 0.0,
        model_id=model.model_id,
        path=output,
    )
    logger.info(
        "embeddings for %s: %d embedded, %d from cache, %d flagged, %.1f docs/s",
        partition.key,
        stats.embedded,
        stats.cache_hits,
        stats.flagged,
        stats.docs_per_second,
    )
    return stats


def _previous_run(output: Path, source_sha256: str, model_id: str) -> tuple[int, int] | None:
    try:
        metadata = pq.read_metadata(output)
    except (FileNotFoundError, pa.ArrowInvalid):
        return None
    values = metadata.metadata or {}
    if (
        values.get(SOURCE_SHA256_KEY) != source_sha256.encode()
        or values.get(MODEL_ID_KEY) != model_id.encode()
    ):
        return None
    return metadata.num_rows, int(values.get(LIVE_ROWS_KEY, b"0"))


def _flagged_mask(documents: pa.Table) -> np.ndarray:
    retracted = documents.column("retracted").fill_null(False).to_numpy(zero_copy_only=False)
    deleted = documents.column("deleted").fill_null(False).to_numpy(zero_copy_only=False)
    return np.asarray(retracted | deleted, dtype=bool)


def _embed_missing(
    documents: pa.Table,
    hashes: list[str],
    live_rows: np.ndarray,
    missing: list[str],
    model: EmbeddingModel,
    batch_size: int,
) -> dict[str, np.ndarray]:
    if not missing:
        return {}
    titles = documents.column("title").to_pylist()
    texts = documents.column("text").to_pylist()
    first_row: dict[str, int] = {}
    for row in live_rows:
        first_row.setdefault(hashes[row], int(row))
    inputs = [document_text(titles[first_row[h]], texts[first_row[h]]) for h in missing]
    vectors = model.encode_documents(inputs, batch_size=batch_size)
    return dict(zip(missing, vectors, strict=True))


def _embeddings_table(
    documents: pa.Table, vectors: np.ndarray, flagged: np.ndarray, dimension: int
) -> pa.Table:
    schema = embeddings_schema(dimension)
    vector_column = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1), type=pa.float32()), dimension, mask=pa.array(flagged)
    )
    # A documents file written with a looser schema (say, nanosecond timestamps) still yields
    # embeddings files of one exact schema.
    columns = [documents.column(name).cast(schema.field(name).type) for name in CARRIED_COLUMNS]
    return pa.Table.from_arrays([*columns, vector_column], schema=schema)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _write_model_file(model_dir: Path, model: EmbeddingModel) -> None:
    path = model_dir / MODEL_FILE
    description = {"model_id": model.model_id, "dimension": model.dimension, "name": model.name}
    payload = (json.dumps(description, indent=2) + "\n").encode()
    if path.exists() and path.read_bytes() == payload:
        return
    atomic_write_bytes(path, payload)


def read_model_dimension(layout: DataLayout, model_id: str) -> int | None:
    """Returns the vector dimension recorded for a model's embeddings, or None if none exist."""
    try:
        description = json.loads((model_embeddings_dir(layout, model_id) / MODEL_FILE).read_text())
    except FileNotFoundError:
        return None
    return int(description["dimension"])


@contextmanager
def _open_store(path: Path) -> Iterator[sqlite3.Connection]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S)) as connection:
        # WAL lets parallel partition runs read while one of them writes.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS vectors ("
            "content_hash TEXT PRIMARY KEY, vector BLOB NOT NULL, created_at TEXT NOT NULL"
            ") WITHOUT ROWID"
        )
        yield connection


def _lookup(
    store: sqlite3.Connection, content_hashes: list[str], dimension: int
) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for chunk in _chunks(content_hashes, _LOOKUP_CHUNK):
        placeholders = ",".join("?" * len(chunk))
        query = f"SELECT content_hash, vector FROM vectors WHERE content_hash IN ({placeholders})"
        for content_hash, blob in store.execute(query, chunk):
            vector = np.frombuffer(blob, dtype=np.float32)
            if vector.shape == (dimension,):
                found[content_hash] = vector
    return found


def _insert(store: sqlite3.Connection, vectors: dict[str, np.ndarray]) -> None:
    if not vectors:
        return
    created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with store:
        store.executemany(
            "INSERT OR REPLACE INTO vectors (content_hash, vector, created_at) VALUES (?, ?, ?)",
            (
                (content_hash, np.asarray(vector, dtype=np.float32).tobytes(), created_at)
                for content_hash, vector in vectors.items()
            ),
        )


def prune_content_store(model_dir: Path, created_before: dt.datetime, dry_run: bool = False) -> int:
    """Removes cached vectors whose text no remaining partition file of the model holds.

    Partition files carry their own vectors, so the store is only a cache and pruning it never
    loses data. Vectors cached at or after ``created_before`` are kept whatever the files say: a
    run embedding right now may not have written its partition file yet.

    Args:
        model_dir: one model's embeddings folder (``embeddings/<model slug>``).
        created_before: only vectors cached before this instant may go.
        dry_run: count what would go without removing it.

    Returns:
        How many cached vectors were (or would be) removed.
    """
    store_path = model_dir / STORE_FILE
    if not store_path.exists():
        return 0
    referenced = {
        content_hash
        for path in sorted((model_dir / PARTITIONS_DIR).glob("*/*.parquet"))
        for content_hash in pq.read_table(path, columns=["content_hash"]).column(0).to_pylist()
    }
    cutoff = created_before.astimezone(dt.UTC).isoformat(timespec="seconds")
    with _open_store(store_path) as store:
        store.execute("CREATE TEMP TABLE referenced (content_hash TEXT PRIMARY KEY)")
        store.executemany("INSERT OR IGNORE INTO referenced VALUES (?)", ((h,) for h in referenced))
        unreferenced = (
            "FROM vectors WHERE created_at < ? "
            "AND content_hash NOT IN (SELECT content_hash FROM referenced)"
        )
        (count,) = store.execute(f"SELECT COUNT(*) {unreferenced}", (cutoff,)).fetchone()
        if count and not dry_run:
            with store:
                store.execute(f"DELETE {unreferenced}", (cutoff,))
    return int(count)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_embeddings_partition(path: Path) -> tuple[pa.Table, np.ndarray]:
    """Reads one partition embeddings file.

    Args:
        path: the file.

    Returns:
        The table without its vector column, and a ``(rows, dimension)`` float32 array whose
        rows for retracted or deleted documents are zeros.
    """
    table = pq.read_table(path)
    vector_column = table.column("vector").combine_chunks()
    dimension = vector_column.type.list_size
    flat = vector_column.values.to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(vector_column), dimension)
    vectors = np.nan_to_num(vectors, nan=0.0) if vector_column.null_count else vectors
    return table.drop_columns(["vector"]), vectors
