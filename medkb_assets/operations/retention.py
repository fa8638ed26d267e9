"""Retention: removing partitions older than the configured window, and old index versions.

Everything medkb stores per partition lives under a folder named after the partition's day::

    raw/<source>/<date>/<topic>/...                      fetch folders and latest.json
    documents/<date>/<topic>.parquet
    embeddings/<model>/partitions/<date>/<topic>.parquet

A day older than ``today - retention_days`` is removed from all three. The index is not edited
here: its builder notices that the embeddings files it consumed are gone and drops their
documents from the next version (it also drops documents dated before the window). Index
versions beyond the newest few are deleted, never the one ``CURRENT`` names.

Every run that removes something appends one JSON line to ``<data_dir>/retention_log.jsonl``.
"""

# Dagster inspects the annotations of ops, checks and sensors when they are defined, so they
# must stay real objects rather than postponed strings.
import datetime as dt
import json
import logging
import os
import re
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from medkb_assets.config import MedkbConfig
from medkb_assets.embeddings.cache import PARTITIONS_DIR, prune_content_store
from medkb_assets.index.store import LOCK_FILE, list_versions, prune_versions, read_current_version
from medkb_assets.policies import JOB_MAX_RUNTIME_SECONDS
from medkb_assets.resources import DataDirResource
from medkb_assets.storage import DataLayout

logger = logging.getLogger(__name__)

RETENTION_LOG_FILE = "retention_log.jsonl"
DEFAULT_KEEP_INDEX_VERSIONS = 5
# Long enough for an incremental build to finish; pruning must not race a publish.
INDEX_LOCK_TIMEOUT_S = 900.0
METADATA_TABLE_ROWS = 200
DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")

KINDS = ("raw", "documents", "embeddings", "index")


@dataclass(frozen=True)
class RemovedPath:
    """One thing retention removed.

    Attributes:
        kind: ``raw`` (one partition's fetch folders), ``documents`` or ``embeddings`` (one
            partition file), or ``index`` (one version folder).
        path: relative to the data directory.
        partition_date: the partition's day; None for an index version.
        files: regular files it held.
        bytes: their total size.
    """

    kind: str
    path: str
    partition_date: str | None
    files: int
    bytes: int


@dataclass
class RetentionReport:
    """What one retention pass removed (or, on a dry run, would remove)."""

    today: dt.date
    cutoff: dt.date
    retention_days: int
    keep_index_versions: int
    current_index_version: str | None
    dry_run: bool = False
    removed: list[RemovedPath] = field(default_factory=list)
    # Per model folder: vectors dropped from the content-hash cache because no remaining
    # partition holds their text.
    cached_vectors_removed: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Returns the number of removed entries of each kind, every kind present."""
        counted = Counter(entry.kind for entry in self.removed)
        return {kind: counted.get(kind, 0) for kind in KINDS}

    @property
    def bytes_removed(self) -> int:
        return sum(entry.bytes for entry in self.removed)

    def to_record(self) -> dict[str, Any]:
        """Returns the report as the JSON object written to the retention log."""
        return {
            "removed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "today": self.today.isoformat(),
            "cutoff": self.cutoff.isoformat(),
            "retention_days": self.retention_days,
            "keep_index_versions": self.keep_index_versions,
            "current_index_version": self.current_index_version,
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "bytes": self.bytes_removed,
            "cached_vectors_removed": self.cached_vectors_removed,
            "paths": [
                {
                    "kind": entry.kind,
                    "path": entry.path,
                    "partition_date": entry.partition_date,
                    "files": entry.files,
                    "bytes": entry.bytes,
                }
                for entry in self.removed
            ],
        }


def retention_cutoff(today: dt.date, retention_days: int) -> dt.date:
    """Returns the first day kept: partitions dated before it are expired."""
    return today - dt.timedelta(days=retention_days)


def apply_retention(
    layout: DataLayout,
    config: MedkbConfig,
    today: dt.date,
    *,
    keep_index_versions: int = DEFAULT_KEEP_INDEX_VERSIONS,
    dry_run: bool = False,
    lock_timeout_s: float = INDEX_LOCK_TIMEOUT_S,
) -> RetentionReport:
    """Removes expired partitions' raw, documents and embeddings files, and old index versions.

    Args:
        layout: the data directory layout.
        config: the configuration; ``retention_days`` sets the window.
        today: the day the window is measured from.
        keep_index_versions: index versions kept besides the one ``CURRENT`` names.
        dry_run: report what would go without removing or logging anything.
        lock_timeout_s: how long to wait for a running index build before pruning versions.

    Returns:
        What was removed, in the order it was removed.

    Raises:
        filelock.Timeout: an index build held the builder lock for longer than
            ``lock_timeout_s``; partition files were already handled by then.
    """
    if keep_index_versions < 1:
        raise ValueError("keep_index_versions must be at least 1")
    cutoff = retention_cutoff(today, config.retention_days)
    report = RetentionReport(
        today=today,
        cutoff=cutoff,
        retention_days=config.retention_days,
        keep_index_versions=keep_index_versions,
        current_index_version=read_current_version(layout.index_dir),
        dry_run=dry_run,
    )

    for source_dir in _subfolders(layout.root / "raw"):
        for date_dir in _expired_date_folders(source_dir, cutoff):
            entries = [
                _describe(layout, "raw", path, date_dir.name) for path in _subfolders(date_dir)
            ]
            report.removed.extend(_remove_date_folder(date_dir, entries, dry_run))

    for date_dir in _expired_date_folders(layout.documents_dir, cutoff):
        entries = [
            _describe(layout, "documents", path, date_dir.name)
            for path in sorted(date_dir.glob("*.parquet"))
        ]
        report.removed.extend(_remove_date_folder(date_dir, entries, dry_run))

    started = dt.datetime.now(dt.UTC)
    for model_dir in _subfolders(layout.embeddings_dir):
        for date_dir in _expired_date_folders(model_dir / PARTITIONS_DIR, cutoff):
            entries = [
                _describe(layout, "embeddings", path, date_dir.name)
                for path in sorted(date_dir.glob("*.parquet"))
            ]
            report.removed.extend(_remove_date_folder(date_dir, entries, dry_run))
        report.cached_vectors_removed[model_dir.name] = _prune_cache(model_dir, started, dry_run)

    report.removed.extend(_prune_index(layout, keep_index_versions, dry_run, lock_timeout_s))

    if (report.removed or any(report.cached_vectors_removed.values())) and not dry_run:
        _append_log(layout.root / RETENTION_LOG_FILE, report.to_record())
    logger.info(
        "retention before %s%s: %s",
        cutoff.isoformat(),
        " (dry run)" if dry_run else "",
        ", ".join(f"{count} {kind}" for kind, count in report.counts().items()),
    )
    return report


def _prune_cache(model_dir: Path, started: dt.datetime, dry_run: bool) -> int:
    # The content-hash store is a cache beside files that carry their own vectors: a store or
    # file that cannot be read costs only this clean-up, never the partitions' removal.
    try:
        return prune_content_store(model_dir, created_before=started, dry_run=dry_run)
    except (sqlite3.DatabaseError, pa.ArrowException, OSError) as error:
        logger.warning("%s: embedding cache not pruned: %s", model_dir.name, error)
        return 0


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.is_symlink())


def _expired_date_folders(folder: Path, cutoff: dt.date) -> list[Path]:
    expired = []
    for entry in _subfolders(folder):
        # Only folders named like a partition day are ever considered; anything else an operator
        # put there is left alone.
        if not DATE_FOLDER.match(entry.name):
            continue
        try:
            day = dt.date.fromisoformat(entry.name)
        except ValueError:
            continue
        if day < cutoff:
            expired.append(entry)
    return expired


def _describe(layout: DataLayout, kind: str, path: Path, partition_date: str | None) -> RemovedPath:
    if path.is_dir():
        files = [item for item in path.rglob("*") if item.is_file() and not item.is_symlink()]
    else:
        files = [path]
    return RemovedPath(
        kind=kind,
        path=path.relative_to(layout.root).as_posix(),
        partition_date=partition_date,
        files=len(files),
        bytes=sum(item.stat().st_size for item in files),
    )


def _remove_date_folder(
    date_dir: Path, entries: list[RemovedPath], dry_run: bool
) -> list[RemovedPath]:
    if not dry_run:
        shutil.rmtree(date_dir)
    return entries


def _prune_index(
    layout: DataLayout, keep_index_versions: int, dry_run: bool, lock_timeout_s: float
) -> list[RemovedPath]:
    from filelock import FileLock

    index_dir = layout.index_dir
    if not index_dir.is_dir():
        return []
    if dry_run:
        return _index_versions_to_prune(layout, keep_index_versions)
    with FileLock(str(index_dir / LOCK_FILE), timeout=lock_timeout_s):
        entries = _index_versions_to_prune(layout, keep_index_versions)
        deleted = set(prune_versions(index_dir, keep_index_versions))
    return [entry for entry in entries if Path(entry.path).name in deleted]


def _index_versions_to_prune(layout: DataLayout, keep_index_versions: int) -> list[RemovedPath]:
    """Mirrors ``prune_versions``: all but the newest versions, never the one CURRENT names."""
    current = read_current_version(layout.index_dir)
    versions = list_versions(layout.index_dir)
    doomed = [
        name for name in versions[: max(len(versions) - keep_index_versions, 0)] if name != current
    ]
    return [_describe(layout, "index", layout.index_dir / name, None) for name in doomed]


def _append_log(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record, sort_keys=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


class RetentionRunConfig(dg.Config):
    """Launch-time options of a retention run."""

    keep_index_versions: int = DEFAULT_KEEP_INDEX_VERSIONS
    dry_run: bool = False


def build_retention_job(config: MedkbConfig) -> dg.JobDefinition:
    """Builds the ``retention`` job, which removes what is older than ``retention_days``."""
    medkb_config = config

    @dg.op(
        name="apply_retention",
        description=(
            f"Removes raw fetches, documents and embeddings of partitions older than "
            f"{config.retention_days} days and all but the newest index versions, never the "
            "version CURRENT names; appends what went to retention_log.jsonl."
        ),
        tags={"kind": "python"},
    )
    def apply_retention_op(
        context: dg.OpExecutionContext, config: RetentionRunConfig, data_dir: DataDirResource
    ) -> dg.Output[dict[str, int]]:
        layout = data_dir.layout()
        report = apply_retention(
            layout,
            medkb_config,
            dt.datetime.now(dt.UTC).date(),
            keep_index_versions=config.keep_index_versions,
            dry_run=config.dry_run,
        )
        counts = report.counts()
        context.log.info(
            "%s (partitions before %s, old index versions): %s; %d bytes",
            "would remove" if report.dry_run else "removed",
            report.cutoff.isoformat(),
            ", ".join(f"{count} {kind}" for kind, count in counts.items()),
            report.bytes_removed,
        )
        return dg.Output(counts, metadata=_report_metadata(report, layout))

    @dg.job(
        name="retention",
        description=(
            "Weekly clean-up of partitions past the retention window and of old index versions; "
            "the next index build drops the expired documents' vectors."
        ),
        tags={"dagster/max_runtime": JOB_MAX_RUNTIME_SECONDS},
    )
    def retention_job() -> None:
        apply_retention_op()

    return retention_job


def build_retention_schedule(job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """Runs ``job`` every Sunday at 03:30 UTC, after that night's daily update has started."""
    return dg.ScheduleDefinition(
        name="retention_schedule",
        job=job,
        cron_schedule="30 3 * * 0",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def _report_metadata(report: RetentionReport, layout: DataLayout) -> dict[str, Any]:
    rows = report.removed[:METADATA_TABLE_ROWS]
    table = dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "kind": entry.kind,
                    "path": entry.path,
                    "partition_date": entry.partition_date or "",
                    "files": entry.files,
                    "bytes": entry.bytes,
                }
            )
            for entry in rows
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("kind", "string"),
                dg.TableColumn("path", "string"),
                dg.TableColumn("partition_date", "string"),
                dg.TableColumn("files", "int"),
                dg.TableColumn("bytes", "int"),
            ]
        ),
    )
    counts = report.counts()
    return {
        "cutoff": report.cutoff.isoformat(),
        "retention_days": report.retention_days,
        "dry_run": report.dry_run,
        "current_index_version": report.current_index_version or "none",
        "raw_partitions_removed": counts["raw"],
        "documents_files_removed": counts["documents"],
        "embeddings_files_removed": counts["embeddings"],
        "index_versions_removed": counts["index"],
        "cached_vectors_removed": sum(report.cached_vectors_removed.values()),
        "bytes_removed": report.bytes_removed,
        "removed": table,
        "removed_not_shown": max(len(report.removed) - len(rows), 0),
        "log": dg.MetadataValue.path(str(layout.root / RETENTION_LOG_FILE)),
    }
