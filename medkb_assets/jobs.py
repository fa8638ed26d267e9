"""The daily update job and its schedule."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.partitions.partitioned_schedule import (
    UnresolvedPartitionedAssetScheduleDefinition,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from medkb_assets.policies import JOB_MAX_RUNTIME_SECONDS

DAILY_JOB = "daily_update"
PARTITIONED_ASSETS = (
    "raw_pubmed",
    "raw_who",
    "raw_cdc",
    "raw_medlineplus",
    "documents",
    "embeddings",
)


def build_daily_update_job(
    excluded_checks: Sequence[dg.AssetChecksDefinition] = (),
) -> UnresolvedAssetJobDefinition:
    """The partitioned job that fetches, cleans and embeds one topic's day.

    Args:
        excluded_checks: checks on these assets that judge the whole asset (freshness) rather
            than the partition a run builds; their own sensor runs them.
    """
    selection: dg.AssetSelection = dg.AssetSelection.assets(*PARTITIONED_ASSETS)
    if excluded_checks:
        selection = selection - dg.AssetSelection.checks(*excluded_checks)
    return dg.define_asset_job(
        name=DAILY_JOB,
        selection=selection,
        description=(
            "Fetches one topic's sources for one day, rebuilds its documents and embeds what is "
            "new; faiss_index follows on its own once the partitions settle."
        ),
        tags={"dagster/max_runtime": JOB_MAX_RUNTIME_SECONDS},
    )


def build_daily_update_schedules(
    job: UnresolvedAssetJobDefinition,
) -> list[dg.ScheduleDefinition | UnresolvedPartitionedAssetScheduleDefinition]:
    """The daily update at 02:00 UTC and its catch-up at 12:00 UTC, one run per topic each.

    Both fetch the UTC day that just ended. PubMed dates records by US Eastern time, so at 02:00
    UTC the last hours of that Entrez day are still open; the catch-up run fetches the day again
    once it has closed. Unchanged records cost nothing downstream: their content hashes are
    already embedded.
    """
    return [
        dg.build_schedule_from_partitioned_job(
            job,
            hour_of_day=hour,
            minute_of_hour=0,
            name=name,
            default_status=dg.DefaultScheduleStatus.RUNNING,
        )
        for name, hour in (("daily_update_schedule", 2), ("daily_catch_up_schedule", 12))
    ]
