"""The ``raw_pubmed`` asset: one topic's PubMed records for one Entrez day, kept verbatim."""

import datetime as dt
import time
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from medkb_assets.config import MedkbConfig
from medkb_assets.partitions import build_partitions
from medkb_assets.policies import ASSET_RETRY_POLICY
from medkb_assets.resources import DataDirResource, NcbiResource
from medkb_assets.sources.base import RawPayload
from medkb_assets.sources.http import SourceUnavailableError
from medkb_assets.sources.pubmed.bulk import resolve_files, select_records
from medkb_assets.sources.pubmed.client import ResultTooLargeError
from medkb_assets.sources.pubmed.parser import parse_pubmed_xml
from medkb_assets.sources.raw_store import write_fetch
from medkb_assets.storage import PartitionRef

NCBI_POOL = "ncbi"


def build_raw_pubmed(
    config: MedkbConfig, retry_policy: dg.RetryPolicy = ASSET_RETRY_POLICY
) -> dg.AssetsDefinition:
    """Builds ``raw_pubmed`` over the configuration's partitions."""

    @dg.asset(
        name="raw_pubmed",
        partitions_def=build_partitions(config),
        retry_policy=retry_policy,
        pool=NCBI_POOL,
        group_name="sources",
        kinds={"python", "xml"},
        description=(
            "PubMed records that entered PubMed (Entrez date) on the partition's day and match "
            "the topic's query: every esearch/efetch response, gzip-compressed under "
            "raw/pubmed/<date>/<topic>/, or the matching records cut from NLM's baseline and "
            "update files when `pubmed.files` is configured."
        ),
    )
    def raw_pubmed(
        context: AssetExecutionContext, ncbi: NcbiResource, data_dir: DataDirResource
    ) -> dg.MaterializeResult:
        partition = PartitionRef.parse(context.partition_key)
        topic = config.topics[partition.topic]
        layout = data_dir.layout()
        fetched_at = dt.datetime.now(dt.UTC)
        started = time.monotonic()

        payloads: list[RawPayload] = []
        summary: dict[str, Any]
        if "pubmed" not in topic.sources:
            summary = {"mode": "disabled", "status": "disabled", "hits": 0, "records_fetched": 0}
        elif config.pubmed.files:
            payloads, summary = _select_from_files(context, config, partition)
        else:
            try:
                payloads, summary = _fetch_from_eutils(context, ncbi, config, partition)
            except SourceUnavailableError as error:
                # Dagster retries the step first; once its retries are spent, the outage is
                # recorded so documents still build from the other sources and name PubMed.
                if context.retry_number < retry_policy.max_retries:
                    raise
                context.log.error(
                    "NCBI unavailable for %s after %d attempts: %s",
                    partition.key,
                    context.retry_number + 1,
                    error,
                )
                summary = {
                    "mode": "eutils",
                    "status": "unavailable",
                    "error": str(error),
                    "query": topic.pubmed_query,
                    "hits": 0,
                    "records_fetched": 0,
                }
        summary["duration_seconds"] = round(time.monotonic() - started, 3)

        fetch_dir = write_fetch(layout, "pubmed", partition, payloads, summary, fetched_at)
        if summary.get("cap_hit") and summary["mode"] == "files":
            context.log.warning(
                "cap of %d records reached for %s: %d of %d records kept",
                config.max_records_per_partition,
                partition.key,
                summary["records_fetched"],
                summary["hits"],
            )
        return dg.MaterializeResult(
            metadata={
                "status": summary.get("status", "ok"),
                "error": summary.get("error", ""),
                "mode": summary["mode"],
                "query": summary.get("query", ""),
                "hits": summary["hits"],
                "records_fetched": summary["records_fetched"],
                "requests": summary.get("requests", 0),
                "retries": summary.get("retries", 0),
                "cap": config.max_records_per_partition,
                "cap_hit": bool(summary.get("cap_hit", False)),
                "duration_seconds": summary["duration_seconds"],
                "raw_path": dg.MetadataValue.path(str(fetch_dir)),
                "dagster/row_count": summary["records_fetched"],
            }
        )

    return raw_pubmed


def _fetch_from_eutils(
    context: AssetExecutionContext,
    ncbi: NcbiResource,
    config: MedkbConfig,
    partition: PartitionRef,
) -> tuple[list[RawPayload], dict[str, Any]]:
    topic = config.topics[partition.topic]
    day = dt.date.fromisoformat(partition.date)
    cap = config.max_records_per_partition
    with ncbi.client() as client:
        search = client.search(topic.pubmed_query, day)
        context.log.info("esearch %r on %s: %d hits", topic.pubmed_query, day, search.count)
        payloads = [search.raw]
        try:
            payloads.extend(client.fetch(search, max_records=cap))
        except ResultTooLargeError as error:
            # Refetching cannot help: the day must be split or read from NLM's files.
            raise dg.Failure(description=str(error), allow_retries=False) from error
        # A truncated or garbled 200 answer is refused here, where a retry fetches it again,
        # rather than stored for documents to fail on at every rerun.
        records_fetched = sum(len(parse_pubmed_xml(p.body).records) for p in payloads[1:])
        plan = search.plan(cap)
        if plan.cap_hit:
            context.log.warning("%s: %s", partition.key, plan.describe(records_fetched))
        summary = {
            "mode": "eutils",
            "query": topic.pubmed_query,
            "request": search.request_params,
            "query_translation": search.query_translation,
            "hits": search.count,
            "records_fetched": records_fetched,
            "cap_hit": plan.cap_hit,
            "requests": client.stats.requests,
            "retries": client.stats.retries,
        }
    return payloads, summary


def _select_from_files(
    context: AssetExecutionContext, config: MedkbConfig, partition: PartitionRef
) -> tuple[list[RawPayload], dict[str, Any]]:
    assert config.pubmed.files is not None
    topic = config.topics[partition.topic]
    paths = resolve_files(config.pubmed.files)
    selection = select_records(
        paths, partition.date, topic.keywords, config.max_records_per_partition
    )
    context.log.info(
        "read %d records from %d NLM files: %d match %s on %s, %d deletions",
        selection.scanned,
        len(paths),
        len(selection.matched_pmids),
        partition.topic,
        partition.date,
        len(selection.deleted_pmids),
    )
    request = {"files": config.pubmed.files, "entrez_date": partition.date}
    payload = RawPayload(name="records.xml", body=selection.as_xml(), request=request)
    summary = {
        "mode": "files",
        "query": f"keywords: {', '.join(topic.keywords)}",
        "request": request,
        "source_files": selection.files,
        "scanned": selection.scanned,
        "hits": selection.matched_total,
        "records_fetched": len(selection.matched_pmids),
        "deleted": len(selection.deleted_pmids),
        "cap_hit": selection.cap_hit,
    }
    return [payload], summary
