"""The ``faiss_index`` asset, its checks, and the automation that keeps it following partitions."""

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dagster as dg
from dagster import AssetExecutionContext

from medkb_assets.config import MedkbConfig
from medkb_assets.index.builder import BuildStats, build_index
from medkb_assets.index.report import (
    counts_table,
    documents_per_day_chart,
    new_documents_table,
    read_manifest,
)
from medkb_assets.markdown import markdown_cell
from medkb_assets.policies import ASSET_RETRY_POLICY
from medkb_assets.resources import DataDirResource, EmbeddingModelResource

CHECK_COUNTS = "vector_counts_match"
CHECK_LOADS = "index_loads_and_self_retrieves"
CHECK_FINITE = "no_nan_vectors"
CHECK_DIMENSION = "dimension_matches_model"
LINEAGE_ROWS = 500

# Rebuild once embeddings partitions have changed and none is still running: a backfill of a
# hundred partitions then costs one incremental build at the end, not one per partition.
INDEX_AUTOMATION = (
    dg.AutomationCondition.any_deps_updated().since(
        dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    )
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("embeddings changed and settled")


class IndexBuildConfig(dg.Config):
    """Launch-time options of an index build.

    Attributes:
        index_type: ``auto`` searches exactly up to 50,000 vectors and builds an HNSW graph
            beyond; ``flat`` forces exact search at any size; ``hnsw`` forces the graph.
        keep_versions: published versions kept for rollback.
    """

    index_type: Literal["auto", "flat", "hnsw"] = "auto"
    keep_versions: int = 5


@dataclass
class IndexDefinitions:
    assets: list[dg.AssetsDefinition] = field(default_factory=list)
    asset_checks: list[dg.AssetChecksDefinition] = field(default_factory=list)
    sensors: list[dg.SensorDefinition] = field(default_factory=list)


def build_index_definitions(config: MedkbConfig) -> IndexDefinitions:
    """Builds ``faiss_index``, its asset checks and the sensor that evaluates its automation."""
    retention_days = config.retention_days

    @dg.asset(
        name="faiss_index",
        deps=["embeddings"],
        retry_policy=ASSET_RETRY_POLICY,
        automation_condition=INDEX_AUTOMATION,
        group_name="knowledge_base",
        kinds={"faiss"},
        description=(
            "The searchable knowledge base: one FAISS inner-product index over every document's "
            "vector (one per doc_id, topics merged), rebuilt incrementally and published "
            "atomically as a new version folder under index/ with a Parquet manifest of where "
            "each vector came from. Retracted, deleted and expired documents leave it."
        ),
    )
    def faiss_index(
        context: AssetExecutionContext,
        config: IndexBuildConfig,
        embedding_model: EmbeddingModelResource,
        data_dir: DataDirResource,
    ) -> dg.MaterializeResult:
        model = embedding_model.get_model()
        stats = build_index(
            data_dir.layout(),
            model.model_id,
            retention_days=retention_days,
            today=dt.datetime.now(dt.UTC).date(),
            index_type=config.index_type,
            keep_versions=config.keep_versions,
        )
        if stats.changed:
            context.log.info(
                "published %s: %d vectors (+%d, ~%d, -%d) in %.1fs",
                stats.version,
                stats.vectors,
                stats.added,
                stats.replaced,
                stats.removed,
                stats.build_seconds,
            )
        else:
            context.log.info("no embeddings changed; %s stays current", stats.version)
        report = _report(data_dir.layout().index_dir, stats)
        return dg.MaterializeResult(
            metadata={
                **report,
                "index_version": stats.version,
                "published_new_version": stats.changed,
                "vectors": stats.vectors,
                "added": stats.added,
                "replaced": stats.replaced,
                "removed": stats.removed,
                "model_id": stats.model_id,
                "index_type": stats.index_type,
                "build_seconds": round(stats.build_seconds, 3),
                "partitions_consumed": stats.partitions_consumed,
                "partitions_read": dg.MetadataValue.md(_lineage_table(stats.partitions_read)),
            },
            data_version=dg.DataVersion(stats.version),
        )

    return IndexDefinitions(
        assets=[faiss_index],
        asset_checks=[_index_checks()],
        sensors=[
            dg.AutomationConditionSensorDefinition(
                "index_automation",
                target=dg.AssetSelection.assets("faiss_index"),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=60,
            )
        ],
    )


def _report(index_dir: Path, stats: BuildStats) -> dict[str, dg.MetadataValue]:
    """Tables and a chart of what the current version holds and what it added."""
    manifest = read_manifest(index_dir, stats.version)
    if manifest is None:
        return {}
    parent = read_manifest(index_dir, stats.parent_version) if stats.changed else manifest
    today = dt.datetime.now(dt.UTC).date()
    return {
        "new_documents": dg.MetadataValue.md(new_documents_table(manifest, parent)),
        "documents_per_topic_and_source": dg.MetadataValue.md(counts_table(manifest)),
        "documents_per_day": dg.MetadataValue.md(documents_per_day_chart(manifest, today)),
    }


def _lineage_table(partitions_read: tuple[tuple[str, str], ...]) -> str:
    """The embeddings partitions a build took in, with the data version each had."""
    if not partitions_read:
        return "_no embeddings partition changed since the previous version_"
    shown = sorted(partitions_read)[:LINEAGE_ROWS]
    rows = [f"| {markdown_cell(key)} | {version[:16]} |" for key, version in shown]
    more = len(partitions_read) - len(shown)
    footer = [f"\n_and {more} more partitions_"] if more > 0 else []
    return "\n".join(["| partition | embeddings data version |", "| --- | --- |", *rows, *footer])


def _index_checks() -> dg.AssetChecksDefinition:
    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                CHECK_COUNTS,
                asset="faiss_index",
                blocking=True,
                description="Vectors = manifest rows = distinct doc_ids.",
            ),
            dg.AssetCheckSpec(
                CHECK_LOADS,
                asset="faiss_index",
                blocking=True,
                description="The current version loads; a stored document retrieves itself first.",
            ),
            dg.AssetCheckSpec(
                CHECK_FINITE,
                asset="faiss_index",
                blocking=True,
                description="No vector holds NaN or infinity.",
            ),
            dg.AssetCheckSpec(
                CHECK_DIMENSION,
                asset="faiss_index",
                blocking=True,
                description="The index dimension is the embedding model's.",
            ),
        ],
    )
    def faiss_index_checks(embedding_model: EmbeddingModelResource, data_dir: DataDirResource):
        from medkb_assets.index.verify import check_index

        model = embedding_model.get_model()
        for name, outcome in check_index(data_dir.layout().index_dir, model).items():
            yield dg.AssetCheckResult(
                check_name=name,
                asset_key="faiss_index",
                passed=outcome.passed,
                description=outcome.message,
                metadata=outcome.metadata,
            )

    return faiss_index_checks
