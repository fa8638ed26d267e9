"""The versioned FAISS index on disk: how versions are named, published and read.

Layout under ``<data_dir>/index/``::

    CURRENT                 the version readers load, e.g. ``v000007``
    v000007/index.faiss     faiss.write_index output; ids are the manifest's vector_id
    v000007/manifest.parquet  one row per vector
    v000007/summary.json    version, parent, model, counts, timings
    v000007/state.json      what the builder needs to continue incrementally
    .lock                   serialises builders
    .tmp-*                  a publish in progress, or the leftover of a crashed one

A version folder is complete before it gets its final name, and ``CURRENT`` moves only after
that rename, so a reader that follows ``CURRENT`` always finds a whole version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
TEMP_PREFIX = ".tmp-"
PUBLISHED_FILE = "PUBLISHED"  # every version that ever became CURRENT, one a line
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.parquet"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.json"
VERSION_PATTERN = re.compile(r"^v(\d{6,})$")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("vector_id", pa.int64(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("title", pa.string()),
        pa.field("url", pa.string()),
        pa.field("published", pa.string()),
        pa.field("entrez_date", pa.string()),
        pa.field("topics", pa.list_(pa.string())),
        pa.field("partitions", pa.list_(pa.string())),
        pa.field("retracted", pa.bool_()),
        # When the indexed text was fetched; a later fetch of the same doc_id wins.
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
    ]
)
MANIFEST_COLUMNS = [field.name for field in MANIFEST_SCHEMA]


class IndexVerificationError(RuntimeError):
    """A staged index version failed verification and was not published."""


class IndexNotFoundError(FileNotFoundError):
    """No index version has been published yet under the index directory."""


@dataclass
class LoadedIndex:
    """One published index version, loaded into memory.

    Attributes:
        version: the version name, e.g. ``v000007``.
        index: the FAISS index; its ids are ``manifest.vector_id``.
        manifest: one row per vector (see :data:`MANIFEST_SCHEMA`).
        summary: the version's ``summary.json``.
    """

    version: str
    index: faiss.Index
    manifest: pd.DataFrame
    summary: dict[str, Any]


def version_name(number: int) -> str:
    """Returns the folder name of version ``number`` (``v000007`` for 7)."""
    return f"v{number:06d}"


def version_number(name: str) -> int | None:
    """Returns the number of a version folder name, or None if ``name`` is not one."""
    match = VERSION_PATTERN.match(name)
    return int(match.group(1)) if match else None


def read_current_version(index_dir: Path) -> str | None:
    """Returns the version ``CURRENT`` points at, or None when nothing is published yet."""
    try:
        name = (index_dir / CURRENT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if version_number(name) is None:
        raise ValueError(f"{index_dir / CURRENT_FILE} holds {name!r}, not a version name")
    return name


def list_versions(index_dir: Path) -> list[str]:
    """Returns the version folders under ``index_dir``, oldest first."""
    if not index_dir.is_dir():
        return []
    named = [(version_number(entry.name), entry.name) for entry in index_dir.iterdir()]
    return [name for number, name in sorted((n, s) for n, s in named if n is not None)]


def load_current_index(index_dir: Path) -> LoadedIndex:
    """Loads the version ``CURRENT`` points at.

    Args:
        index_dir: the index directory, ``DataLayout.index_dir``.

    Returns:
        The loaded index, manifest and summary.

    Raises:
        IndexNotFoundError: nothing has been published yet.
    """
    version = read_current_version(index_dir)
    if version is None:
        raise IndexNotFoundError(
            f"no FAISS index under {index_dir} yet: materialize the faiss_index asset "
            "(for example with `make demo`, or from the Dagster UI) to build one"
        )
    return load_index_version(index_dir, version)


def load_index_version(index_dir: Path, version: str) -> LoadedIndex:
    """Loads one published version by name.

    Args:
        index_dir: the index directory.
        version: the version folder name.

    Returns:
        The loaded index, manifest and summary.
    """
    return load_index_folder(index_dir / version, version)


def load_index_folder(folder: Path, version: str) -> LoadedIndex:
    """Loads the index, manifest and summary files of one version folder, staged or published."""
    import faiss

    summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    manifest = pd.read_parquet(folder / MANIFEST_FILE)
    index = faiss.read_index(str(folder / INDEX_FILE))
    return LoadedIndex(version=version, index=index, manifest=manifest, summary=summary)


def read_version_state(index_dir: Path, version: str) -> dict[str, Any]:
    """Returns the builder state saved with a version (empty for a version without one)."""
    try:
        state: dict[str, Any] = json.loads(
            (index_dir / version / STATE_FILE).read_text(encoding="utf-8")
        )
    except FileNotFoundError:
        return {}
    return state


def fsync_path(path: Path) -> None:
    """Flushes a file, or a directory entry list, to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


PublishHook = Callable[[str], None]
PUBLISH_STEPS = ("temp_written", "renamed", "pointer_staged", "published")


def publish_version(
    index_dir: Path,
    version: str,
    write_files: Callable[[Path], None],
    hook: PublishHook | None = None,
    verify: Callable[[Path], list[str]] | None = None,
) -> Path:
    """Publishes a new version so that readers see the old one or the new one, never a mix.

    The files go to a ``.tmp-`` folder and are flushed, the folder is renamed to its version
    name, and ``CURRENT`` is replaced through a flushed temporary file. A crash before the last
    step leaves ``CURRENT`` on the previous version; the next builder removes the leftovers.

    Args:
        index_dir: the index directory.
        version: the new version's name; no folder of that name may exist.
        write_files: writes the version's files into the folder it is given.
        hook: called with each name of :data:`PUBLISH_STEPS` once that step is durable.
        verify: checks the staged folder before anything is renamed and returns its problems;
            any problem abandons the publish, so a version that fails it never ships.

    Returns:
        The published version folder.

    Raises:
        IndexVerificationError: ``verify`` found problems; ``CURRENT`` is unchanged.
    """
    index_dir.mkdir(parents=True, exist_ok=True)
    notify = hook or (lambda step: None)
    temporary = index_dir / f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex}"
    temporary.mkdir()
    write_files(temporary)
    for file in temporary.iterdir():
        fsync_path(file)
    fsync_path(temporary)
    notify("temp_written")
    problems = verify(temporary) if verify is not None else []
    if problems:
        shutil.rmtree(temporary, ignore_errors=True)
        raise IndexVerificationError(f"index {version} not published: {'; '.join(problems)}")

    final = index_dir / version
    os.rename(temporary, final)
    fsync_path(index_dir)
    notify("renamed")

    pointer = index_dir / f"{TEMP_PREFIX}{CURRENT_FILE}-{uuid.uuid4().hex}"
    with pointer.open("w", encoding="utf-8") as stream:
        stream.write(version + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    notify("pointer_staged")

    os.replace(pointer, index_dir / CURRENT_FILE)
    fsync_path(index_dir)
    _record_published(index_dir, version)
    notify("published")
    logger.info("published index version %s under %s", version, index_dir)
    return final


def remove_leftovers(index_dir: Path) -> list[str]:
    """Removes what crashed publishes left behind; call only while holding the builder lock.

    That is every ``.tmp-`` entry, and every version folder newer than ``CURRENT`` that was
    never published: it was renamed into place but ``CURRENT`` never moved to it, so no reader
    has seen it. Versions newer than ``CURRENT`` that were published stay: ``CURRENT`` was rolled
    back past them, and they remain available to roll forward to.

    Args:
        index_dir: the index directory.

    Returns:
        The names removed.
    """
    if not index_dir.is_dir():
        return []
    current = read_current_version(index_dir)
    current_number = -1 if current is None else (version_number(current) or 0)
    published = published_versions(index_dir)
    removed = []
    for entry in sorted(index_dir.iterdir()):
        number = version_number(entry.name)
        unpublished = number is not None and number > current_number and entry.name not in published
        if entry.name.startswith(TEMP_PREFIX) or unpublished:
            _remove_entry(entry)
            removed.append(entry.name)
    if removed:
        logger.warning("removed leftovers of interrupted index builds: %s", ", ".join(removed))
    return removed


def published_versions(index_dir: Path) -> set[str]:
    """Every version that ever became ``CURRENT`` under ``index_dir``."""
    try:
        lines = (index_dir / PUBLISHED_FILE).read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return set()
    return set(lines)


def next_version_name(index_dir: Path) -> str:
    """The name of the next version: past every folder and every version ever published, so a
    name is never reused, even after a rollback and pruning."""
    names = [entry.name for entry in index_dir.iterdir()] + sorted(published_versions(index_dir))
    numbers = [number for number in map(version_number, names) if number is not None]
    return version_name(max(numbers, default=0) + 1)


def roll_back(index_dir: Path, version: str, lock_timeout_s: float = 60.0) -> str | None:
    """Points ``CURRENT`` at an earlier published version that is still on disk.

    Args:
        index_dir: the index directory.
        version: the version to serve.
        lock_timeout_s: how long to wait for a running build.

    Returns:
        The version ``CURRENT`` named before.

    Raises:
        ValueError: the version was never published or its files are gone.
    """
    from filelock import FileLock

    with FileLock(str(index_dir / LOCK_FILE), timeout=lock_timeout_s):
        if version not in published_versions(index_dir) or not (index_dir / version).is_dir():
            available = ", ".join(
                sorted(published_versions(index_dir) & set(list_versions(index_dir)))
            )
            raise ValueError(
                f"{version} is not a published version on disk; available: {available}"
            )
        load_index_version(index_dir, version)
        previous = read_current_version(index_dir)
        pointer = index_dir / f"{TEMP_PREFIX}{CURRENT_FILE}-{uuid.uuid4().hex}"
        with pointer.open("w", encoding="utf-8") as stream:
            stream.write(version + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(pointer, index_dir / CURRENT_FILE)
        fsync_path(index_dir)
    logger.warning("index rolled back from %s to %s", previous, version)
    return previous


def _record_published(index_dir: Path, version: str) -> None:
    with (index_dir / PUBLISHED_FILE).open("a", encoding="utf-8") as stream:
        stream.write(version + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def prune_versions(index_dir: Path, keep_versions: int) -> list[str]:
    """Deletes all but the newest ``keep_versions`` versions, never the one ``CURRENT`` names.

    Args:
        index_dir: the index directory.
        keep_versions: how many versions to keep (at least 1).

    Returns:
        The versions deleted.
    """
    current = read_current_version(index_dir)
    versions = list_versions(index_dir)
    doomed = [name for name in versions[: max(len(versions) - keep_versions, 0)] if name != current]
    for name in doomed:
        _remove_entry(index_dir / name)
    if doomed:
        logger.info("deleted old index versions %s", ", ".join(doomed))
    return doomed


def _remove_entry(entry: Path) -> None:
    import shutil

    if entry.is_dir() and not entry.is_symlink():
        # Renaming first means a deletion cut short never leaves a half folder under a version
        # name; the ``.tmp-`` remainder is removed by the next build.
        trash = entry.with_name(f"{TEMP_PREFIX}trash-{entry.name}-{uuid.uuid4().hex}")
        os.rename(entry, trash)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def stored_vectors(index: Any) -> tuple[Any, Any]:
    """Returns the ids and vectors an id-mapped flat or HNSW index holds.

    Args:
        index: an ``IndexIDMap``/``IndexIDMap2`` over a flat or HNSW-flat index.

    Returns:
        ``(ids, vectors)``: an int64 array and a matching ``(n, d)`` float32 array.
    """
    import faiss
    import numpy as np

    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    inner = faiss.downcast_index(index.index)
    if inner.ntotal == 0:
        return ids, np.zeros((0, index.d), dtype=np.float32)
    return ids, np.asarray(inner.reconstruct_n(0, inner.ntotal), dtype=np.float32)
