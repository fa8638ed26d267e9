"""The ``documents`` asset: one topic's cleaned documents for one day, from every source."""

import hashlib
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from medkb_assets.config import MedkbConfig
from medkb_assets.documents.build import (
    PartitionDocuments,
    build_partition_documents,
    read_documents,
    write_documents,
)
from medkb_assets.markdown import markdown_cell
from medkb_assets.partitions import build_partitions
from medkb_assets.policies import ASSET_RETRY_POLICY
from medkb_assets.resources import DataDirResource
from medkb_assets.storage import DataLayout, PartitionRef

RAW_ASSETS = ("raw_pubmed", "raw_who", "raw_cdc", "raw_medlineplus")
PREVIEW_ROWS = 10

CHECK_UNIQUE = "unique_doc_ids"
CHECK_TEXT = "documents_have_text"
CHECK_SOURCES = "all_sources_answered"


def build_documents(config: MedkbConfig) -> dg.AssetsDefinition:
    """Builds ``documents`` over the configuration's partitions."""

    @dg.asset(
        name="documents",
        partitions_def=build_partitions(config),
        deps=list(RAW_ASSETS),
        retry_policy=ASSET_RETRY_POLICY,
        group_name="knowledge_base",
        kinds={"python", "parquet"},
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_UNIQUE,
                asset="documents",
                blocking=True,
                description="Every doc_id appears once in the partition.",
            ),
            dg.AssetCheckSpec(
                CHECK_TEXT,
                asset="documents",
                blocking=True,
                description="Every live document has a title and text.",
            ),
            dg.AssetCheckSpec(
                CHECK_SOURCES,
                asset="documents",
                description="Each source enabled for the topic answered, or is named.",
            ),
        ],
        description=(
            "Cleaned, de-duplicated documents of one topic and day from every enabled source "
            "(PubMed, WHO, CDC, MedlinePlus): one Parquet file per partition under "
            "documents/<date>/<topic>.parquet, keyed by a stable doc_id (pubmed:<pmid>, who:<id>, "
            "...), with a content hash that decides what is re-embedded. Retracted papers and "
            "deleted citations stay as flagged rows so the index can drop them."
        ),
    )
    def documents(context: AssetExecutionContext, data_dir: DataDirResource):
        partition = PartitionRef.parse(context.partition_key)
        layout = data_dir.layout()
        sources = config.topics[partition.topic].sources

        previous = read_documents(layout, partition)
        built = build_partition_documents(layout, partition, sources)
        write_documents(layout, partition, built.frame)
        for outcome in built.outcomes:
            if outcome.status in ("unavailable", "not_fetched"):
                kept = f"; keeping its fetch of {outcome.fetched_at}" if outcome.rows else ""
                context.log.warning(
                    "%s for %s: %s%s%s",
                    outcome.source,
                    partition.key,
                    outcome.status,
                    f" ({outcome.error})" if outcome.error else "",
                    kept,
                )

        yield dg.MaterializeResult(
            metadata=_metadata(built, previous, layout, partition),
            data_version=_data_version(built.frame),
        )
        yield from _checks(built)

    return documents


def _metadata(
    built: PartitionDocuments,
    previous: pd.DataFrame | None,
    layout: DataLayout,
    partition: PartitionRef,
) -> dict[str, Any]:
    frame = built.frame
    live = frame[~frame["retracted"] & ~frame["deleted"]]
    new, updated, removed = _changes(previous, frame)
    per_source = pd.DataFrame(
        [
            {
                "source": outcome.source,
                "status": outcome.status,
                "documents": outcome.rows,
                "without_text": outcome.without_text,
                "skipped_malformed": outcome.skipped,
                "fetched_at": outcome.fetched_at or "",
                "failed_at": outcome.failed_at or "",
            }
            for outcome in built.outcomes
        ]
    )
    preview = live.head(PREVIEW_ROWS)[["doc_id", "title", "published", "url"]].assign(
        title=lambda frame: frame["title"].map(markdown_cell)
    )
    return {
        "dagster/row_count": len(frame),
        "documents": len(live),
        "new": new,
        "updated": updated,
        "removed_since_last_build": removed,
        "retracted": int(frame["retracted"].sum()),
        "deleted": int(frame["deleted"].sum()),
        "missing_sources": ", ".join(built.missing_sources) or "none",
        "per_source": dg.MetadataValue.md(per_source.to_markdown(index=False)),
        "preview": dg.MetadataValue.md(
            preview.to_markdown(index=False) if len(preview) else "_no documents_"
        ),
        "path": dg.MetadataValue.path(str(layout.documents_path(partition))),
    }


def _data_version(frame: pd.DataFrame) -> dg.DataVersion:
    """A digest of what the partition holds: its doc_ids and their content hashes."""
    pairs = sorted(zip(frame["doc_id"], frame["content_hash"], strict=True))
    return dg.DataVersion(hashlib.sha256(repr(pairs).encode()).hexdigest()[:24])


def _changes(previous: pd.DataFrame | None, current: pd.DataFrame) -> tuple[int, int, int]:
    """Counts documents new, changed and gone since the partition's previous build."""
    if previous is None or previous.empty:
        return len(current), 0, 0
    before = dict(zip(previous["doc_id"], previous["content_hash"], strict=True))
    after = dict(zip(current["doc_id"], current["content_hash"], strict=True))
    new = sum(1 for doc_id in after if doc_id not in before)
    updated = sum(1 for doc_id, digest in after.items() if before.get(doc_id, digest) != digest)
    removed = sum(1 for doc_id in before if doc_id not in after)
    return new, updated, removed


def _checks(built: PartitionDocuments):
    frame = built.frame
    duplicates = frame["doc_id"][frame["doc_id"].duplicated()].unique().tolist()
    yield dg.AssetCheckResult(
        check_name=CHECK_UNIQUE,
        passed=not duplicates,
        metadata={"duplicates": len(duplicates), "examples": ", ".join(duplicates[:5])},
    )

    live = frame[~frame["retracted"] & ~frame["deleted"]]
    empty = live[(live["title"].str.len() == 0) | (live["text"].str.len() == 0)]
    yield dg.AssetCheckResult(
        check_name=CHECK_TEXT,
        passed=empty.empty,
        metadata={"empty": len(empty), "examples": ", ".join(empty["doc_id"].head(5))},
    )

    missing = built.missing_sources
    yield dg.AssetCheckResult(
        check_name=CHECK_SOURCES,
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"missing: {', '.join(missing)}; rerun the partition once they recover"
            if missing
            else "every enabled source answered"
        ),
        metadata={"missing_sources": ", ".join(missing) or "none"},
    )
