"""The daily update job and its schedule."""

from __future__ import annotations

import dagster as dg

from medkb_assets.policies import JOB_MAX_RUNTIME_SECONDS

PARTITIONED_ASSETS = (
    "raw_pubmed",
    "raw_who",
    "raw_cdc",
    "raw_medlineplus",
    "documents",
    "embeddings",
)

daily_update_job = dg.define_asset_job(
    name="daily_update",
    selection=dg.AssetSelection.assets(*PARTITIONED_ASSETS),
    description=(
        "Fetches one topic's sources for one day, rebuilds its documents and embeds what is new; "
        "faiss_index follows on its own once the partitions settle."
    ),
    tags={"dagster/max_runtime": JOB_MAX_RUNTIME_SECONDS},
)

# Runs at 02:00 UTC for the day that just ended, one run per topic: NCBI has indexed most of
# the previous day's records by then.
daily_update_schedule = dg.build_schedule_from_partitioned_job(
    daily_update_job,
    hour_of_day=2,
    minute_of_hour=0,
    name="daily_update_schedule",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
