"""Freshness: is the index and every topic's documents still being updated?

The index must have been materialized within the last 26 hours (it follows the daily run),
and each topic must have had a ``documents`` partition materialized within the last 48 hours.
Dagster's ``FreshnessPolicy`` judges an asset as a whole, and its time-partition checks need a
purely time-partitioned asset, so neither can tell that one topic of a topic x day asset
stopped updating; these checks read the instance's materialization records per partition
instead. Their results carry Dagster's freshness metadata keys, so the UI shows last-update
and fresh-until times and :func:`build_freshness_sensor` knows when to evaluate them again.
"""

# Dagster inspects the annotations of ops, checks and sensors when they are defined, so they
# must stay real objects rather than postponed strings.
import datetime as dt
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from medkb_assets.config import MedkbConfig
from medkb_assets.storage import DataLayout, PartitionRef

logger = logging.getLogger(__name__)

INDEX_ASSET = dg.AssetKey("faiss_index")
DOCUMENTS_ASSET = dg.AssetKey("documents")
INDEX_MAX_AGE = dt.timedelta(hours=26)
DOCUMENTS_MAX_AGE = dt.timedelta(hours=48)
INDEX_CHECK = "freshness"
TOPIC_CHECK_PREFIX = "freshness_"
FRESHNESS_SENSOR = "freshness_checks_sensor"
FRESHNESS_SENSOR_INTERVAL_S = 600

# Dagster's own freshness metadata keys: the UI renders them, and the sensor built by
# build_sensor_for_freshness_checks reads FRESH_UNTIL to decide when a passing check can fail.
FRESHNESS_PARAMS = "dagster/freshness_params"
LAST_UPDATED = "dagster/last_updated_timestamp"
LOWER_BOUND = "dagster/freshness_lower_bound_timestamp"
FRESH_UNTIL = "dagster/fresh_until_timestamp"


@dataclass(frozen=True)
class TopicUpdate:
    """The last successful ``documents`` update of one topic, as the instance recorded it.

    Attributes:
        topic: the topic key.
        partition_key: the partition materialized most recently, None if none ever was.
        materialized_at: when that happened (POSIX seconds).
        latest_partition_date: the newest day with a materialized partition of the topic.
        partitions: how many of the topic's partitions were ever materialized.
    """

    topic: str
    partition_key: str | None
    materialized_at: float | None
    latest_partition_date: str | None
    partitions: int


def topic_check_name(topic: str) -> str:
    """Returns the name of the freshness check of one topic's documents."""
    return f"{TOPIC_CHECK_PREFIX}{topic}"


def documents_updates_by_topic(
    instance: dg.DagsterInstance, topics: Iterable[str]
) -> dict[str, TopicUpdate]:
    """Reads the last successful ``documents`` materialization of each topic.

    Args:
        instance: the Dagster instance whose event log to read.
        topics: the topic keys to report; topics never materialized are reported empty.

    Returns:
        One :class:`TopicUpdate` per topic.
    """
    latest_ids = instance.get_latest_storage_id_by_partition(
        DOCUMENTS_ASSET, dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    newest: dict[str, tuple[int, str | None]] = {}
    latest_date: dict[str, str] = {}
    counts: dict[str, int] = {}
    for partition_key, storage_id in latest_ids.items():
        try:
            partition = PartitionRef.parse(partition_key)
        except ValueError:
            continue
        counts[partition.topic] = counts.get(partition.topic, 0) + 1
        if storage_id > newest.get(partition.topic, (-1, None))[0]:
            newest[partition.topic] = (storage_id, partition_key)
        latest_date[partition.topic] = max(latest_date.get(partition.topic, ""), partition.date)

    timestamps: dict[int, float] = {}
    storage_ids = [storage_id for storage_id, _ in newest.values()]
    if storage_ids:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DOCUMENTS_ASSET, storage_ids=storage_ids),
            limit=len(storage_ids),
        ).records
        timestamps = {record.storage_id: record.timestamp for record in records}

    updates = {}
    for topic in topics:
        storage_id, newest_key = newest.get(topic, (-1, None))
        updates[topic] = TopicUpdate(
            topic=topic,
            partition_key=newest_key,
            materialized_at=timestamps.get(storage_id),
            latest_partition_date=latest_date.get(topic),
            partitions=counts.get(topic, 0),
        )
    return updates


def latest_partition_dates_from_files(layout: DataLayout) -> dict[str, str]:
    """Returns the newest ``documents/<date>/<topic>.parquet`` day of each topic on disk."""
    latest: dict[str, str] = {}
    if not layout.documents_dir.is_dir():
        return latest
    for path in layout.documents_dir.glob("*/*.parquet"):
        day, topic = path.parent.name, path.stem
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            continue
        latest[topic] = max(latest.get(topic, ""), day)
    return latest


def build_freshness_checks(config: MedkbConfig) -> list[dg.AssetChecksDefinition]:
    """Builds the freshness checks: ``faiss_index`` within 26 hours, each topic within 48.

    Args:
        config: the configuration; one ``documents`` check per configured topic.

    Returns:
        Two definitions, one per asset, each subsettable to single checks.
    """
    return [_index_freshness_check(), _documents_freshness_check(sorted(config.topics))]


def build_freshness_sensor(
    checks: list[dg.AssetChecksDefinition],
) -> dg.SensorDefinition:
    """Builds the sensor that re-evaluates freshness checks once they could have gone stale.

    Args:
        checks: the definitions :func:`build_freshness_checks` returned.
    """
    with warnings.catch_warnings():
        # Superseded in favour of FreshnessPolicy, which cannot judge topics separately (see
        # the module docstring); the sensor itself works with any check reporting FRESH_UNTIL.
        warnings.simplefilter("ignore", category=dg.SupersessionWarning)
        return dg.build_sensor_for_freshness_checks(
            freshness_checks=checks,
            minimum_interval_seconds=FRESHNESS_SENSOR_INTERVAL_S,
            name=FRESHNESS_SENSOR,
            default_status=dg.DefaultSensorStatus.RUNNING,
        )


def _index_freshness_check() -> dg.AssetChecksDefinition:
    @dg.multi_asset_check(
        name="faiss_index_freshness",
        specs=[
            dg.AssetCheckSpec(
                INDEX_CHECK,
                asset=INDEX_ASSET,
                description=(
                    f"faiss_index was materialized within the last {_hours(INDEX_MAX_AGE)} hours."
                ),
            )
        ],
        can_subset=True,
    )
    def faiss_index_freshness(context: dg.AssetCheckExecutionContext) -> Iterator[Any]:
        latest = context.instance.get_latest_materialization_event(INDEX_ASSET)
        now = dt.datetime.now(dt.UTC).timestamp()
        yield _freshness_result(
            INDEX_ASSET,
            INDEX_CHECK,
            latest.timestamp if latest else None,
            now,
            INDEX_MAX_AGE,
            subject="faiss_index",
            extra={},
        )

    return faiss_index_freshness


def _documents_freshness_check(topics: list[str]) -> dg.AssetChecksDefinition:
    @dg.multi_asset_check(
        name="documents_freshness",
        specs=[
            dg.AssetCheckSpec(
                topic_check_name(topic),
                asset=DOCUMENTS_ASSET,
                description=(
                    f"A documents partition of topic {topic} was materialized within the last "
                    f"{_hours(DOCUMENTS_MAX_AGE)} hours."
                ),
            )
            for topic in topics
        ],
        can_subset=True,
    )
    def documents_freshness(context: dg.AssetCheckExecutionContext) -> Iterator[Any]:
        selected = {
            key.name[len(TOPIC_CHECK_PREFIX) :]
            for key in context.selected_asset_check_keys
            if key.asset_key == DOCUMENTS_ASSET
        }
        updates = documents_updates_by_topic(context.instance, sorted(selected))
        now = dt.datetime.now(dt.UTC).timestamp()
        for topic, update in updates.items():
            yield _freshness_result(
                DOCUMENTS_ASSET,
                topic_check_name(topic),
                update.materialized_at,
                now,
                DOCUMENTS_MAX_AGE,
                subject=f"topic {topic}",
                extra={
                    "last_partition_materialized": update.partition_key or "none",
                    "latest_partition_date": update.latest_partition_date or "none",
                },
            )

    return documents_freshness


def _freshness_result(
    asset_key: dg.AssetKey,
    check_name: str,
    updated_at: float | None,
    now: float,
    max_age: dt.timedelta,
    subject: str,
    extra: Mapping[str, Any],
) -> dg.AssetCheckResult:
    lower_bound = now - max_age.total_seconds()
    passed = updated_at is not None and updated_at >= lower_bound
    metadata: dict[str, Any] = {
        FRESHNESS_PARAMS: dg.MetadataValue.json(
            {"lower_bound_delta_seconds": max_age.total_seconds(), "timezone": "UTC"}
        ),
        LOWER_BOUND: dg.MetadataValue.timestamp(lower_bound),
        **extra,
    }
    if updated_at is not None:
        metadata[LAST_UPDATED] = dg.MetadataValue.timestamp(updated_at)
    if passed:
        assert updated_at is not None
        metadata[FRESH_UNTIL] = dg.MetadataValue.timestamp(updated_at + max_age.total_seconds())

    if updated_at is None:
        description = f"{subject} has never been materialized"
    else:
        age_hours = (now - updated_at) / 3600
        state = "fresh" if passed else "stale"
        description = (
            f"{subject} is {state}: last updated {age_hours:.1f} hours ago "
            f"(allowed {_hours(max_age)})"
        )
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata=metadata,
    )


def _hours(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 3600)
