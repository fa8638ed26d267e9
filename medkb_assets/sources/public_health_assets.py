"""``raw_who``, ``raw_cdc`` and ``raw_medlineplus``: public-health items for one topic and day.

A public-health service that is down must not cost the partition its PubMed documents. When a
source still fails after its client's own retries, the asset records the outage as the
partition's latest fetch instead of failing the run; ``documents`` then builds from the sources
that answered and its ``all_sources_answered`` check names the missing one. Rerunning the
partition later fetches again and fills the gap; documents are keyed by stable ids, so nothing
is duplicated.
"""

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from medkb_assets.config import MedkbConfig
from medkb_assets.partitions import build_partitions
from medkb_assets.policies import ASSET_RETRY_POLICY
from medkb_assets.resources import DataDirResource, PublicHealthResource
from medkb_assets.sources import cdc, medlineplus, who
from medkb_assets.sources.base import FetchResult
from medkb_assets.sources.http import PacedClient, RetryPolicy, SourceUnavailableError
from medkb_assets.sources.raw_store import write_fetch
from medkb_assets.storage import PartitionRef

Fetcher = Callable[[PacedClient, dt.date, Sequence[str], int], FetchResult]


@dataclasses.dataclass(frozen=True)
class PublicHealthSource:
    name: str
    label: str
    client: Callable[[RetryPolicy], PacedClient]
    fetch: Fetcher
    description: str


PUBLIC_HEALTH_SOURCES = (
    PublicHealthSource(
        name="who",
        label="WHO Disease Outbreak News",
        client=who.who_client,
        fetch=who.fetch_who,
        description=(
            "WHO Disease Outbreak News items published on the partition's day that mention the "
            "topic's keywords, with their Overview, Assessment and Advice as text; the API's "
            "pages kept verbatim under raw/who/<date>/<topic>/."
        ),
    ),
    PublicHealthSource(
        name="cdc",
        label="CDC content syndication",
        client=cdc.cdc_client,
        fetch=cdc.fetch_cdc,
        description=(
            "CDC content syndication media published on the partition's day that match the "
            "topic's keywords, with each item's content as text; listings and content responses "
            "kept verbatim under raw/cdc/<date>/<topic>/."
        ),
    ),
    PublicHealthSource(
        name="medlineplus",
        label="MedlinePlus health topics",
        client=medlineplus.medlineplus_client,
        fetch=medlineplus.fetch_medlineplus,
        description=(
            "NIH/NLM MedlinePlus health topics matching the topic's keywords, created on the "
            "partition's day, with the full summary, groups and MeSH headings as text; search "
            "responses kept verbatim under raw/medlineplus/<date>/<topic>/."
        ),
    ),
)


def build_public_health_assets(config: MedkbConfig) -> list[dg.AssetsDefinition]:
    """Builds one raw asset per public-health source over the configuration's partitions."""
    return [_build_asset(config, source) for source in PUBLIC_HEALTH_SOURCES]


def _build_asset(config: MedkbConfig, source: PublicHealthSource) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"raw_{source.name}",
        partitions_def=build_partitions(config),
        retry_policy=ASSET_RETRY_POLICY,
        # The client paces itself within a process; the pool (limit 1 in dagster.yaml) keeps
        # concurrent topic runs from multiplying the rate a service sees.
        pool=source.name,
        group_name="sources",
        kinds={"python", "json"},
        description=source.description,
    )
    def raw_source(
        context: AssetExecutionContext,
        public_health: PublicHealthResource,
        data_dir: DataDirResource,
    ) -> dg.MaterializeResult:
        partition = PartitionRef.parse(context.partition_key)
        topic = config.topics[partition.topic]
        fetched_at = dt.datetime.now(dt.UTC)
        started = time.monotonic()

        summary: dict[str, Any]
        items: list[dict[str, Any]] | None = None
        result = FetchResult()
        if source.name not in topic.sources:
            summary = {"status": "disabled"}
        else:
            try:
                with source.client(public_health.retry_policy()) as client:
                    result = source.fetch(
                        client,
                        dt.date.fromisoformat(partition.date),
                        topic.keywords,
                        config.max_records_per_partition,
                    )
                summary = {"status": "ok"}
                items = [dataclasses.asdict(document) for document in result.documents]
            except (SourceUnavailableError, ValueError) as error:
                # ValueError: the service answered 200 with a body that is not its API's format,
                # such as a maintenance page; for the partition that is an outage like a 503.
                context.log.warning(
                    "%s unavailable for %s after retries: %s", source.label, partition.key, error
                )
                summary = {"status": "unavailable", "error": str(error)}

        summary.update(
            keywords=list(topic.keywords),
            matched=result.matched,
            records_fetched=len(result.documents),
            skipped=result.skipped,
            skip_reasons=result.skip_reasons[:20],
            requests=result.requests,
            retries=result.retries,
            cap_hit=result.cap_hit,
            duration_seconds=round(time.monotonic() - started, 3),
        )
        fetch_dir = write_fetch(
            data_dir.layout(),
            source.name,
            partition,
            result.payloads,
            summary,
            fetched_at,
            items=items,
        )
        if result.cap_hit:
            context.log.warning(
                "cap of %d records reached for %s on %s",
                config.max_records_per_partition,
                source.label,
                partition.key,
            )
        return dg.MaterializeResult(
            metadata={
                "status": summary["status"],
                "error": summary.get("error", ""),
                "keywords": ", ".join(topic.keywords),
                "matched": result.matched,
                "records_fetched": len(result.documents),
                "skipped_malformed": result.skipped,
                "requests": result.requests,
                "retries": result.retries,
                "cap_hit": result.cap_hit,
                "duration_seconds": summary["duration_seconds"],
                "raw_path": dg.MetadataValue.path(str(fetch_dir)),
                "dagster/row_count": len(result.documents),
            }
        )

    return raw_source
