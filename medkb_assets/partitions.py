"""The topic x day partitions every partitioned asset shares."""

from __future__ import annotations

import dagster as dg

from medkb_assets.config import MedkbConfig

DATE_DIMENSION = "date"
TOPIC_DIMENSION = "topic"


def build_partitions(config: MedkbConfig) -> dg.MultiPartitionsDefinition:
    """Returns daily ``date`` x configured ``topic`` partitions, keyed ``YYYY-MM-DD|topic``.

    Dagster orders the dimensions of a multi-partition key by name, so ``date`` comes first.
    """
    return dg.MultiPartitionsDefinition(
        {
            DATE_DIMENSION: dg.DailyPartitionsDefinition(
                start_date=config.start_date.isoformat(), timezone="UTC"
            ),
            TOPIC_DIMENSION: dg.StaticPartitionsDefinition(sorted(config.topics)),
        }
    )
