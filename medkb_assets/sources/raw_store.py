"""Raw responses kept verbatim, one folder per fetch, so every document traces back to bytes.

Each fetch of one source for one partition writes ``raw/<source>/<date>/<topic>/<fetch id>/``
with every response body gzip-compressed and a ``fetch.json`` describing the requests, then
records it as the partition's ``attempt.json``. Only a fetch that succeeded also becomes
``latest.json``, the one documents are built from: an outage on a rerun must not replace what an
earlier fetch brought in. Older fetches stay until retention removes
them, which is what lets an auditor see how a record's content changed over time.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from medkb_assets.sources.base import RawPayload
from medkb_assets.storage import DataLayout, PartitionRef, atomic_write_bytes, write_gzip

LATEST_FILE = "latest.json"
ATTEMPT_FILE = "attempt.json"
SUCCEEDED = ("ok", "disabled")
FETCH_FILE = "fetch.json"
ITEMS_FILE = "items.json.gz"  # what the responses were parsed into, for public-health sources


def write_fetch(
    layout: DataLayout,
    source: str,
    partition: PartitionRef,
    payloads: list[RawPayload],
    summary: dict[str, Any],
    fetched_at: dt.datetime,
    items: list[dict[str, Any]] | None = None,
) -> Path:
    """Stores one fetch, the latest one too if it succeeded; returns the fetch folder.

    Args:
        layout: the data directory layout.
        source: ``pubmed``, ``who``, ``cdc`` or ``medlineplus``.
        partition: the partition fetched.
        payloads: the response bodies, in request order.
        summary: counts and request parameters to keep beside them (no secrets); its
            ``status`` (default ``ok``) says whether the source answered.
        fetched_at: when the fetch started, UTC.
        items: the normalised items parsed from the responses, kept beside them.
    """
    partition_dir = layout.raw_dir(source, partition)
    fetch_dir = partition_dir / fetched_at.strftime("%Y%m%dT%H%M%S%fZ")
    files = []
    for number, payload in enumerate(payloads, start=1):
        path = fetch_dir / f"{number:04d}-{payload.name}.gz"
        compressed_bytes = write_gzip(path, payload.body)
        files.append(
            {
                "file": path.name,
                "request": payload.request,
                "bytes": len(payload.body),
                "compressed_bytes": compressed_bytes,
            }
        )

    if items is not None:
        write_gzip(fetch_dir / ITEMS_FILE, json.dumps(items, sort_keys=True).encode())

    record = {
        **summary,
        "source": source,
        "partition": partition.key,
        "fetched_at": fetched_at.isoformat(),
        "folder": str(fetch_dir.relative_to(layout.root)),
        "files": files,
    }
    encoded = json.dumps(record, indent=2, sort_keys=True).encode()
    atomic_write_bytes(fetch_dir / FETCH_FILE, encoded)
    atomic_write_bytes(partition_dir / ATTEMPT_FILE, encoded)
    if summary.get("status", "ok") in SUCCEEDED:
        atomic_write_bytes(partition_dir / LATEST_FILE, encoded)
    return fetch_dir


def read_latest(layout: DataLayout, source: str, partition: PartitionRef) -> dict[str, Any] | None:
    """Returns the latest successful fetch of one source and partition, or None."""
    return _read_record(layout.raw_dir(source, partition) / LATEST_FILE)


def read_attempt(layout: DataLayout, source: str, partition: PartitionRef) -> dict[str, Any] | None:
    """Returns the latest fetch attempt of one source and partition, failed or not, or None."""
    return _read_record(layout.raw_dir(source, partition) / ATTEMPT_FILE)


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def payload_paths(layout: DataLayout, record: dict[str, Any]) -> list[Path]:
    """Returns the stored response files of a fetch record, in request order."""
    folder = layout.root / record["folder"]
    return [folder / entry["file"] for entry in record["files"]]
