"""Where medkb keeps its files, and how it writes them so that a crash never leaves half a file.

Layout under the data directory (``MEDKB_DATA_DIR``, default ``data/``)::

    raw/<source>/<date>/<topic>/...     verbatim responses, gzip-compressed
    documents/<date>/<topic>.parquet    cleaned documents, one file per partition
    embeddings/<model>/...              vectors keyed by model and content hash
    index/<version>/                    one folder per index version
    index/CURRENT                       the version readers load
    dagster/                            Dagster instance storage
"""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV_VAR = "MEDKB_DATA_DIR"
DEFAULT_DATA_DIR = "data"


def data_dir() -> Path:
    """Returns the data directory in use (``MEDKB_DATA_DIR`` or ``data/``), as an absolute path."""
    return Path(os.environ.get(DATA_DIR_ENV_VAR) or DEFAULT_DATA_DIR).resolve()


@dataclass(frozen=True)
class PartitionRef:
    """One topic on one day, the unit every partitioned asset works on."""

    date: str
    topic: str

    @classmethod
    def parse(cls, partition_key: str) -> PartitionRef:
        """Parses ``YYYY-MM-DD|topic``, the form Dagster gives multi-partition keys."""
        date, separator, topic = partition_key.partition("|")
        if not separator or not date or not topic:
            raise ValueError(f"partition key {partition_key!r} is not of the form YYYY-MM-DD|topic")
        return cls(date=date, topic=topic)

    @property
    def key(self) -> str:
        return f"{self.date}|{self.topic}"


@dataclass(frozen=True)
class DataLayout:
    """Paths inside one data directory."""

    root: Path

    @classmethod
    def from_env(cls) -> DataLayout:
        return cls(data_dir())

    def raw_dir(self, source: str, partition: PartitionRef) -> Path:
        return self.root / "raw" / source / partition.date / partition.topic

    def raw_source_dir(self, source: str) -> Path:
        return self.root / "raw" / source

    @property
    def documents_dir(self) -> Path:
        return self.root / "documents"

    def documents_path(self, partition: PartitionRef) -> Path:
        return self.documents_dir / partition.date / f"{partition.topic}.parquet"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def dagster_dir(self) -> Path:
        return self.root / "dagster"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` so readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file is
    renamed over ``path``; rename within one file system is atomic on POSIX.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_gzip(path: Path, payload: bytes) -> int:
    """Compresses ``payload`` into ``path`` atomically and returns the compressed size."""
    compressed = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write_bytes(path, compressed)
    return len(compressed)
