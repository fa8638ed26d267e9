"""The whole pipeline in process: NLM files to documents, embeddings, the index and a search."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from medkb_assets.config import DEFAULT_CONFIG_PATH, load_config
from medkb_assets.documents.assets import build_documents
from medkb_assets.embeddings.assets import build_embeddings
from medkb_assets.index.assets import build_index_definitions
from medkb_assets.resources import DataDirResource, EmbeddingModelResource, NcbiResource
from medkb_assets.search import Searcher
from medkb_assets.sources.pubmed.assets import build_raw_pubmed

FIXTURES = Path(__file__).parent / "fixtures" / "pubmed"
PARTITIONS = ["2017-10-18|cancer", "2016-11-29|cancer", "2017-08-09|infectious_outbreaks"]

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(tmp_path, embedding_model):
    document = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    document.update(start_date="2016-01-01", retention_days=7300, pubmed={"files": str(FIXTURES)})
    (tmp_path / "medkb.yaml").write_text(yaml.safe_dump(document))
    config = load_config(tmp_path / "medkb.yaml")
    index = build_index_definitions(config)
    assets = [
        build_raw_pubmed(config),
        build_documents(config),
        build_embeddings(config),
        *index.assets,
        *index.asset_checks,
    ]
    resources = {
        "ncbi": NcbiResource(),
        "embedding_model": EmbeddingModelResource(),
        "data_dir": DataDirResource(path=str(tmp_path / "data")),
    }
    with dg.instance_for_test() as instance:

        def materialize(selection, partition_key=None):
            return dg.materialize(
                assets,
                selection=selection,
                partition_key=partition_key,
                instance=instance,
                resources=resources,
            )

        materialize.instance = instance
        materialize.definitions = dg.Definitions(assets=assets, resources=resources)
        yield materialize, tmp_path / "data"


def test_index_records_the_data_versions_of_the_partitions_it_took_in(pipeline):
    materialize, data_root = pipeline
    embeddings_versions = {}
    for key in PARTITIONS:
        result = materialize(["raw_pubmed", "documents", "embeddings"], key)
        event = result.asset_materializations_for_node("embeddings")[0]
        embeddings_versions[key] = event.tags["dagster/data_version"]

    built = materialize(["faiss_index"])

    metadata = built.asset_materializations_for_node("faiss_index")[0].metadata
    assert metadata["vectors"].value == 5
    assert metadata["added"].value == 5
    assert "Yield of community-based tuberculosis" in metadata["new_documents"].value
    assert "| cancer " in metadata["documents_per_topic_and_source"].value
    lineage = metadata["partitions_read"].value
    for key, data_version in embeddings_versions.items():
        escaped = key.replace("|", "\\|")
        assert f"| {escaped} | {data_version[:16]} |" in lineage
    checks = {check.check_name: check.passed for check in built.get_asset_check_evaluations()}
    assert checks == {
        "vector_counts_match": True,
        "index_loads_and_self_retrieves": True,
        "no_nan_vectors": True,
        "dimension_matches_model": True,
    }

    searcher = Searcher.open(data_root)
    hits = searcher.search("tuberculosis testing in foreign-born populations", k=1)
    assert hits[0].doc_id == "pubmed:28786991"
    assert hits[0].index_version == metadata["index_version"].value
    assert hits[0].partitions == ("2017-08-09|infectious_outbreaks",)


def test_an_unchanged_rerun_embeds_nothing_and_publishes_no_new_version(pipeline):
    materialize, _ = pipeline
    materialize(["raw_pubmed", "documents", "embeddings"], PARTITIONS[0])
    first = materialize(["faiss_index"]).asset_materializations_for_node("faiss_index")[0]

    again = materialize(["raw_pubmed", "documents", "embeddings"], PARTITIONS[0])
    rebuilt = materialize(["faiss_index"]).asset_materializations_for_node("faiss_index")[0]

    embeddings = again.asset_materializations_for_node("embeddings")[0].metadata
    assert embeddings["embedded"].value == 0
    assert rebuilt.metadata["published_new_version"].value is False
    assert rebuilt.metadata["index_version"].value == first.metadata["index_version"].value


def test_the_index_follows_new_embeddings_once_without_a_schedule(pipeline):
    materialize, _ = pipeline
    instance, definitions = materialize.instance, materialize.definitions
    index_key = dg.AssetKey("faiss_index")

    idle = dg.evaluate_automation_conditions(definitions, instance)
    for key in PARTITIONS[:2]:
        materialize(["raw_pubmed", "documents", "embeddings"], key)
    after_backfill = dg.evaluate_automation_conditions(definitions, instance, cursor=idle.cursor)
    repeated = dg.evaluate_automation_conditions(
        definitions, instance, cursor=after_backfill.cursor
    )

    assert idle.get_num_requested(index_key) == 0
    assert after_backfill.get_num_requested(index_key) == 1
    assert repeated.get_num_requested(index_key) == 0
