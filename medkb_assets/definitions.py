"""The medkb code location: every asset, check, job, schedule, sensor and resource."""

from __future__ import annotations

import dagster as dg

from medkb_assets.config import get_config
from medkb_assets.documents.assets import build_documents
from medkb_assets.embeddings.assets import build_embeddings
from medkb_assets.index.assets import build_index_definitions
from medkb_assets.jobs import build_daily_update_job, build_daily_update_schedules
from medkb_assets.operations import build_operations_definitions
from medkb_assets.resources import (
    DataDirResource,
    EmbeddingModelResource,
    PublicHealthResource,
    ncbi_resource_from_env,
)
from medkb_assets.sources.public_health_assets import build_public_health_assets
from medkb_assets.sources.pubmed.assets import build_raw_pubmed


def build_definitions() -> dg.Definitions:
    """Assembles the code location from the configuration in use (``MEDKB_CONFIG``)."""
    config = get_config()
    index = build_index_definitions(config)
    operations = build_operations_definitions(config)
    daily_update_job = build_daily_update_job(excluded_checks=operations.asset_checks)
    return dg.Definitions(
        assets=[
            build_raw_pubmed(config),
            *build_public_health_assets(config),
            build_documents(config),
            build_embeddings(config),
            *index.assets,
        ],
        asset_checks=[*index.asset_checks, *operations.asset_checks],
        jobs=[daily_update_job, *operations.jobs],
        schedules=[*build_daily_update_schedules(daily_update_job), *operations.schedules],
        sensors=[*index.sensors, *operations.sensors],
        resources={
            "ncbi": ncbi_resource_from_env(),
            "public_health": PublicHealthResource(),
            "embedding_model": EmbeddingModelResource(),
            "data_dir": DataDirResource(),
        },
    )


defs = build_definitions()
