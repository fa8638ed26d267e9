"""A public-health source that is down costs the partition nothing but its own documents."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import yaml

from medkb_assets.config import load_config
from medkb_assets.documents.assets import build_documents
from medkb_assets.resources import DataDirResource, NcbiResource, PublicHealthResource
from medkb_assets.sources.public_health_assets import build_public_health_assets
from medkb_assets.sources.pubmed.assets import build_raw_pubmed
from medkb_assets.storage import DataLayout, PartitionRef
from medkb_assets_tests.sources.test_who import ENDPOINT, ZIKA_TITLES_ON_DAY, _catalogue
from medkb_assets_tests.sources.test_who import _odata_service as who_odata_service
from medkb_assets_tests.stand_in import Reply, stand_in_server
from medkb_assets_tests.stand_in_eutils import NcbiStandIn

PUBMED_FIXTURES = Path(__file__).parents[1] / "fixtures" / "pubmed"
PARTITION = "2016-03-29|zika"


def _config(tmp_path: Path):
    path = tmp_path / "medkb.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "start_date": "2016-01-01",
                "topics": {
                    "zika": {
                        "pubmed_query": "zika[Title/Abstract]",
                        "keywords": ["zika", "microcephaly"],
                        "sources": ["pubmed", "who"],
                    }
                },
            }
        )
    )
    return load_config(path)


def _materialize(
    config, data_root: Path, eutils_url: str, pubmed_retries: int = 3
) -> dg.ExecuteInProcessResult:
    raw_who = next(a for a in build_public_health_assets(config) if a.key.path == ["raw_who"])
    raw_pubmed = build_raw_pubmed(config, dg.RetryPolicy(max_retries=pubmed_retries, delay=0.01))
    with dg.instance_for_test() as instance:
        return dg.materialize(
            [raw_pubmed, raw_who, build_documents(config)],
            partition_key=PARTITION,
            instance=instance,
            raise_on_error=False,
            resources={
                "ncbi": NcbiResource(base_url=eutils_url, max_retries=1),
                "public_health": PublicHealthResource(max_retries=2, base_delay_seconds=0.01),
                "data_dir": DataDirResource(path=str(data_root)),
            },
        )


def test_a_source_down_throughout_leaves_pubmed_in_and_a_later_rerun_fills_the_gap_once(
    tmp_path, monkeypatch
):
    config = _config(tmp_path)
    layout = DataLayout(tmp_path / "data")
    article_set = (PUBMED_FIXTURES / "pubMR_pubmed_result_93articles.xml").read_bytes()
    with stand_in_server() as server:
        eutils = NcbiStandIn(server, article_set)
        eutils.count = 3
        monkeypatch.setenv("WHO_API_URL", server.base_url + ENDPOINT)
        server.route(ENDPOINT, lambda request: Reply(503, b"<h1>Service Unavailable</h1>"))

        outage = _materialize(config, layout.root, eutils.base_url)

        server.route(ENDPOINT, who_odata_service(_catalogue()))
        recovered = _materialize(config, layout.root, eutils.base_url)
        again = _materialize(config, layout.root, eutils.base_url)

    assert outage.success
    documents_path = layout.documents_path(PartitionRef.parse(PARTITION))
    raw_who = outage.asset_materializations_for_node("raw_who")[0].metadata
    assert raw_who["status"].value == "unavailable"
    assert "503" in raw_who["error"].value
    documents = outage.asset_materializations_for_node("documents")[0].metadata
    assert documents["missing_sources"].value == "who"
    assert documents["documents"].value == 3
    sources_check = next(
        check
        for check in outage.get_asset_check_evaluations()
        if check.check_name == "all_sources_answered"
    )
    assert not sources_check.passed
    assert sources_check.severity == dg.AssetCheckSeverity.WARN
    assert "who" in sources_check.description

    assert recovered.success and again.success
    frame = pq.read_table(documents_path).to_pandas()
    who_rows = frame[frame["source"] == "who"]
    assert set(who_rows["title"]) == ZIKA_TITLES_ON_DAY
    assert frame["doc_id"].is_unique
    assert (frame["source"] == "pubmed").sum() == 3
    assert all(url.startswith("https://www.who.int/") for url in who_rows["url"])
    again_metadata = again.asset_materializations_for_node("documents")[0].metadata
    assert again_metadata["new"].value == 0
    assert again_metadata["missing_sources"].value == "none"


def test_an_ncbi_outage_is_retried_by_dagster_then_the_other_sources_still_land(
    tmp_path, monkeypatch
):
    config = _config(tmp_path)
    layout = DataLayout(tmp_path / "data")
    with stand_in_server() as server:
        monkeypatch.setenv("WHO_API_URL", server.base_url + ENDPOINT)
        server.route(ENDPOINT, who_odata_service(_catalogue()))
        server.route("/entrez/eutils/esearch.fcgi", lambda request: Reply(503, b"down"))

        result = _materialize(
            config, layout.root, server.base_url + "/entrez/eutils/", pubmed_retries=1
        )
        esearches = len(server.requests_to("/entrez/eutils/esearch.fcgi"))

    assert result.success
    assert esearches == 4  # two Dagster attempts of one request and one client retry each
    raw_pubmed = result.asset_materializations_for_node("raw_pubmed")[0].metadata
    assert raw_pubmed["status"].value == "unavailable"
    assert "503" in raw_pubmed["error"].value
    documents = result.asset_materializations_for_node("documents")[0].metadata
    assert documents["missing_sources"].value == "pubmed"
    frame = pq.read_table(layout.documents_path(PartitionRef.parse(PARTITION))).to_pandas()
    assert set(frame["title"]) == ZIKA_TITLES_ON_DAY
