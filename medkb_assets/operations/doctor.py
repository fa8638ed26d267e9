"""``medkb doctor``: is this installation able to update and serve the knowledge base?

Each check returns one line, OK or FAIL with a reason: the configuration, the data directory,
the embedding model, the current index, the Dagster daemon's heartbeat, and how recently each
topic's documents were updated.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medkb_assets.config import ConfigError, MedkbConfig, config_path, load_config
from medkb_assets.operations.health import (
    documents_updates_by_topic,
    latest_partition_dates_from_files,
)
from medkb_assets.storage import DataLayout

if TYPE_CHECKING:
    import dagster as dg

    from medkb_assets.embeddings.model import EmbeddingModel

HEARTBEAT_MAX_AGE = dt.timedelta(minutes=5)
DEFAULT_MAX_UPDATE_AGE_DAYS = 2
DAGSTER_HOME_ENV_VAR = "DAGSTER_HOME"


@dataclass(frozen=True)
class DoctorCheck:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_doctor(
    layout: DataLayout,
    *,
    config_file: Path | None = None,
    now: dt.datetime | None = None,
    max_update_age_days: int = DEFAULT_MAX_UPDATE_AGE_DAYS,
) -> list[DoctorCheck]:
    """Runs every check and returns one result per line, in report order.

    Args:
        layout: the data directory layout.
        config_file: the configuration to validate; defaults to ``MEDKB_CONFIG`` or the
            packaged file.
        now: the current time (UTC); defaults to the clock.
        max_update_age_days: a topic whose newest ``documents`` partition is older than this
            many days is reported stale (the daily run covers yesterday).

    Returns:
        The checks; the installation is healthy when every one is ``ok``.
    """
    now = now or dt.datetime.now(dt.UTC)
    checks: list[DoctorCheck] = []

    config, config_check = _check_config(config_file)
    checks.append(config_check)
    checks.append(_check_data_dir(layout))
    model, model_check = _check_model()
    checks.append(model_check)
    checks.append(_check_index(layout, model))

    instance, daemon_check = _open_instance()
    try:
        checks.append(daemon_check if instance is None else _check_daemon(instance, now))
        if config is None:
            checks.append(DoctorCheck("updates", False, "no valid configuration, topics unknown"))
        else:
            checks.extend(_check_updates(layout, config, instance, now, max_update_age_days))
    finally:
        if instance is not None:
            instance.dispose()
    return checks


def _check_config(config_file: Path | None) -> tuple[MedkbConfig | None, DoctorCheck]:
    path = config_file or config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        return None, DoctorCheck("config", False, str(error))
    topics = ", ".join(sorted(config.topics))
    return config, DoctorCheck(
        "config",
        True,
        f"{path}: {len(config.topics)} topics ({topics}), retention {config.retention_days} days",
    )


def _check_data_dir(layout: DataLayout) -> DoctorCheck:
    root = layout.root
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return DoctorCheck("data_dir", False, f"{root}: {existing} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".medkb-doctor-"):
            pass
    except OSError as error:
        return DoctorCheck("data_dir", False, f"{root}: not writable ({error.strerror or error})")
    if existing != root:
        return DoctorCheck("data_dir", True, f"{root}: not created yet; {existing} is writable")
    return DoctorCheck("data_dir", True, f"{root}: writable")


def _check_model() -> tuple[EmbeddingModel | None, DoctorCheck]:
    from medkb_assets.embeddings.model import load_embedding_model

    try:
        model = load_embedding_model()
    except Exception as error:  # any failure to load is what the line reports
        return None, DoctorCheck("embedding_model", False, _reason(error))
    return model, DoctorCheck(
        "embedding_model", True, f"{model.model_id} ({model.dimension} dimensions)"
    )


def _check_index(layout: DataLayout, model: EmbeddingModel | None) -> DoctorCheck:
    from medkb_assets.index.store import load_current_index

    try:
        loaded = load_current_index(layout.index_dir)
    except Exception as error:  # a missing or damaged index is what it reports
        return DoctorCheck("index", False, _reason(error))
    vectors = int(loaded.index.ntotal)
    model_id = loaded.summary.get("model_id")
    if vectors != len(loaded.manifest):
        return DoctorCheck(
            "index",
            False,
            f"{loaded.version}: {vectors} vectors but {len(loaded.manifest)} manifest rows",
        )
    if model is not None and model_id != model.model_id:
        return DoctorCheck(
            "index",
            False,
            f"{loaded.version} was built with {model_id}, but the configured model is "
            f"{model.model_id}: rebuild the index (materialize faiss_index)",
        )
    created = loaded.summary.get("created_at", "unknown time")
    return DoctorCheck("index", True, f"{loaded.version}: {vectors} vectors, built {created}")


def _open_instance() -> tuple[dg.DagsterInstance | None, DoctorCheck]:
    home = os.environ.get(DAGSTER_HOME_ENV_VAR)
    if not home:
        return None, DoctorCheck(
            "daemon",
            False,
            f"{DAGSTER_HOME_ENV_VAR} is not set, so there is no Dagster instance to ask "
            "(`make run` sets it to <data dir>/dagster)",
        )
    import dagster as dg

    try:
        instance = dg.DagsterInstance.get()
    except Exception as error:  # an unusable instance is what the line reports
        return None, DoctorCheck("daemon", False, f"cannot open the instance in {home}: {error}")
    return instance, DoctorCheck("daemon", True, "")


def _check_daemon(instance: dg.DagsterInstance, now: dt.datetime) -> DoctorCheck:
    try:
        heartbeats = instance.get_daemon_heartbeats()
        required = list(instance.get_required_daemon_types())
    except Exception as error:  # storage errors are what the line reports
        return DoctorCheck("daemon", False, f"cannot read daemon heartbeats: {_reason(error)}")
    if not heartbeats:
        return DoctorCheck(
            "daemon",
            False,
            "no daemon has ever sent a heartbeat: start it with `make run` "
            "(or `dagster-daemon run`)",
        )

    limit = now.timestamp() - HEARTBEAT_MAX_AGE.total_seconds()
    stale = []
    for daemon_type in required:
        heartbeat = heartbeats.get(daemon_type)
        if heartbeat is None or heartbeat.timestamp < limit:
            last = "never" if heartbeat is None else _ago(now.timestamp() - heartbeat.timestamp)
            stale.append(f"{daemon_type} (last {last})")
    if stale:
        return DoctorCheck(
            "daemon",
            False,
            f"no heartbeat within {_minutes(HEARTBEAT_MAX_AGE)} minutes from: {', '.join(stale)}",
        )
    newest = max(heartbeat.timestamp for heartbeat in heartbeats.values())
    with_errors = sorted(name for name, beat in heartbeats.items() if beat.errors)
    detail = f"{len(required)} daemons alive, newest heartbeat {_ago(now.timestamp() - newest)}"
    if with_errors:
        detail += f"; recent errors in {', '.join(with_errors)}"
    return DoctorCheck("daemon", True, detail)


def _check_updates(
    layout: DataLayout,
    config: MedkbConfig,
    instance: dg.DagsterInstance | None,
    now: dt.datetime,
    max_age_days: int,
) -> list[DoctorCheck]:
    topics = sorted(config.topics)
    latest: dict[str, str | None] = {}
    materialized_at: dict[str, float | None] = {}
    origin = "documents/ files"
    if instance is not None:
        updates = documents_updates_by_topic(instance, topics)
        if any(update.partitions for update in updates.values()):
            origin = "the Dagster instance"
            latest = {topic: update.latest_partition_date for topic, update in updates.items()}
            materialized_at = {topic: update.materialized_at for topic, update in updates.items()}
    if not latest:
        files = latest_partition_dates_from_files(layout)
        latest = {topic: files.get(topic) for topic in topics}

    checks = []
    oldest_allowed = now.date() - dt.timedelta(days=max_age_days)
    for topic in topics:
        name = f"updates:{topic}"
        day = latest.get(topic)
        if day is None:
            checks.append(DoctorCheck(name, False, f"no documents partition yet (from {origin})"))
            continue
        detail = f"latest partition {day}"
        when = materialized_at.get(topic)
        if when is not None:
            detail += f", materialized {_ago(now.timestamp() - when)}"
        detail += f" (from {origin})"
        if dt.date.fromisoformat(day) < oldest_allowed:
            checks.append(
                DoctorCheck(name, False, f"stale: {detail}; expected {oldest_allowed} or later")
            )
        else:
            checks.append(DoctorCheck(name, True, detail))
    return checks


def _reason(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else 'no message'}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _minutes(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)
