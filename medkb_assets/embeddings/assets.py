"""The ``embeddings`` asset: vectors for one partition's new or changed documents."""

import dagster as dg
from dagster import AssetExecutionContext

from medkb_assets.config import MedkbConfig
from medkb_assets.embeddings.cache import embed_partition, file_sha256
from medkb_assets.partitions import build_partitions
from medkb_assets.policies import ASSET_RETRY_POLICY
from medkb_assets.resources import DataDirResource, EmbeddingModelResource
from medkb_assets.storage import PartitionRef


def build_embeddings(config: MedkbConfig) -> dg.AssetsDefinition:
    """Builds ``embeddings`` over the configuration's partitions."""

    @dg.asset(
        name="embeddings",
        partitions_def=build_partitions(config),
        deps=["documents"],
        retry_policy=ASSET_RETRY_POLICY,
        group_name="knowledge_base",
        kinds={"pytorch", "parquet"},
        description=(
            "Sentence-transformer vectors (L2-normalised float32) of one partition's documents, "
            "under embeddings/<model>/. Only text whose content hash the model has not embedded "
            "before is run through the model; the cache is keyed by model identity, so a model "
            "change starts a new embedding space instead of mixing two."
        ),
    )
    def embeddings(
        context: AssetExecutionContext,
        embedding_model: EmbeddingModelResource,
        data_dir: DataDirResource,
    ) -> dg.MaterializeResult:
        partition = PartitionRef.parse(context.partition_key)
        layout = data_dir.layout()
        documents_path = layout.documents_path(partition)
        if not documents_path.exists():
            raise FileNotFoundError(
                f"{documents_path} does not exist: materialize documents for {partition.key} first"
            )

        model = embedding_model.get_model()
        stats = embed_partition(
            documents_path, layout, partition, model, batch_size=embedding_model.batch_size
        )
        context.log.info(
            "%s: embedded %d, %d from cache, %.1f docs/s with %s",
            partition.key,
            stats.embedded,
            stats.cache_hits,
            stats.docs_per_second,
            stats.model_id,
        )
        return dg.MaterializeResult(
            metadata={
                "embedded": stats.embedded,
                "cache_hits": stats.cache_hits,
                "flagged_without_vector": stats.flagged,
                "rows": stats.rows,
                "docs_per_second": round(stats.docs_per_second, 1),
                "seconds": round(stats.seconds, 3),
                "model_id": stats.model_id,
                "unchanged_input": stats.skipped_unchanged,
                "path": dg.MetadataValue.path(str(stats.path)),
            },
            # The same digest the index records for the partitions it takes in, so the lineage
            # view pairs each index version with the exact embeddings it was built from.
            data_version=dg.DataVersion(file_sha256(stats.path)),
        )

    return embeddings
