"""raw_pubmed and documents materialized in process, from NLM files and from E-utilities."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from medkb_assets.config import DEFAULT_CONFIG_PATH, load_config
from medkb_assets.documents.assets import build_documents
from medkb_assets.documents.cleaning import clean_text
from medkb_assets.resources import DataDirResource, NcbiResource
from medkb_assets.sources.pubmed.assets import build_raw_pubmed
from medkb_assets.sources.pubmed.parser import parse_pubmed_file
from medkb_assets.storage import DataLayout, PartitionRef
from medkb_assets_tests.stand_in import Reply, stand_in_server
from medkb_assets_tests.stand_in_eutils import EFETCH, ESEARCH, RATE_LIMIT_BODY, NcbiStandIn

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "pubmed"
PARTITIONS = ["2017-10-18|cancer", "2017-08-09|infectious_outbreaks"]


def _config(tmp_path: Path, **changes):
    document = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    document.update(start_date="2016-01-01", **changes)
    path = tmp_path / "medkb.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_config(path)


def _materialize(
    config,
    data_root: Path,
    partition_key: str,
    ncbi: NcbiResource,
    retry_policy: dg.RetryPolicy | None = None,
):
    raw_pubmed = (
        build_raw_pubmed(config, retry_policy) if retry_policy else build_raw_pubmed(config)
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [raw_pubmed, build_documents(config)],
            partition_key=partition_key,
            instance=instance,
            resources={"ncbi": ncbi, "data_dir": DataDirResource(path=str(data_root))},
        )
        result.log_messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
        return result


def _expected_records(pmids: set[str]):
    records = {}
    for path in [FIXTURES / "pubMR_pubmed_result_93articles.xml", *FIXTURES.glob("*.xml.gz")]:
        records.update({r.pmid: r for r in parse_pubmed_file(path).records if r.pmid in pmids})
    return records


def test_two_partitions_from_nlm_files_hold_their_records_once_with_text_right(tmp_path):
    config = _config(tmp_path, pubmed={"files": str(FIXTURES)})
    layout = DataLayout(tmp_path / "data")

    results = [_materialize(config, layout.root, key, NcbiResource()) for key in PARTITIONS]

    assert all(result.success for result in results)
    cancer = pq.read_table(layout.documents_path(PartitionRef.parse(PARTITIONS[0]))).to_pandas()
    outbreaks = pq.read_table(layout.documents_path(PartitionRef.parse(PARTITIONS[1]))).to_pandas()
    assert sorted(cancer["source_id"]) == ["29038347", "29038521"]
    assert outbreaks["source_id"].tolist() == ["28786991"]

    expected = _expected_records({"29038347", "29038521", "28786991"})
    for frame in (cancer, outbreaks):
        for row in frame.itertuples():
            assert row.title == clean_text(expected[row.source_id].title)
            assert row.text == clean_text(expected[row.source_id].abstract)
            assert row.entrez_date == expected[row.source_id].entrez_date

    raw_event = results[0].asset_materializations_for_node("raw_pubmed")[0]
    assert raw_event.metadata["mode"].value == "files"
    assert raw_event.metadata["records_fetched"].value == 2
    documents_event = results[0].asset_materializations_for_node("documents")[0]
    assert documents_event.metadata["documents"].value == 2
    assert documents_event.metadata["new"].value == 2
    checks = results[0].get_asset_check_evaluations()
    assert {check.check_name: check.passed for check in checks} == {
        "unique_doc_ids": True,
        "documents_have_text": True,
        "all_sources_answered": False,  # who, cdc and medlineplus were never fetched here
    }


def test_rebuilding_an_unchanged_partition_reports_nothing_new(tmp_path):
    config = _config(tmp_path, pubmed={"files": str(FIXTURES)})
    root = tmp_path / "data"

    _materialize(config, root, PARTITIONS[0], NcbiResource())
    second = _materialize(config, root, PARTITIONS[0], NcbiResource())

    metadata = second.asset_materializations_for_node("documents")[0].metadata
    assert (metadata["new"].value, metadata["updated"].value) == (0, 0)
    assert metadata["documents"].value == 2


def test_hitting_the_cap_is_reported_in_metadata_and_log(tmp_path):
    config = _config(tmp_path, pubmed={"files": str(FIXTURES)}, max_records_per_partition=1)

    result = _materialize(config, tmp_path / "data", PARTITIONS[0], NcbiResource())

    metadata = result.asset_materializations_for_node("raw_pubmed")[0].metadata
    assert metadata["cap_hit"].value is True
    assert (metadata["hits"].value, metadata["records_fetched"].value) == (2, 1)
    assert any("cap of 1 records reached" in message for message in result.log_messages)


@pytest.mark.parametrize("bad_key", ["2017-10-18", "cancer", "2017-10-18|unknown_topic"])
def test_a_partition_key_outside_the_definition_is_refused(tmp_path, bad_key):
    config = _config(tmp_path, pubmed={"files": str(FIXTURES)})

    with pytest.raises((dg.DagsterInvariantViolationError, dg.DagsterUnknownPartitionError)):
        _materialize(config, tmp_path / "data", bad_key, NcbiResource())


def test_partitions_fetched_through_a_failing_eutils_hold_every_record_once(tmp_path):
    config = _config(tmp_path)
    layout = DataLayout(tmp_path / "data")
    article_set = (FIXTURES / "pubMR_pubmed_result_93articles.xml").read_bytes()
    partitions = ["2017-10-18|cancer", "2016-11-29|cancer"]

    with stand_in_server() as server:
        eutils = NcbiStandIn(server, article_set, by_entrez_day=True)
        ncbi = NcbiResource(base_url=eutils.base_url, email="curator@medkb.example")
        results = []
        for key in partitions:
            server.inject(ESEARCH, Reply(503, b"<html>Service Unavailable</html>", "text/html"))
            server.inject(EFETCH, Reply(429, RATE_LIMIT_BODY), Reply(502, b"Bad Gateway"))
            results.append(_materialize(config, layout.root, key, ncbi))
        seen = list(server.seen)

    assert all(result.success for result in results)
    statuses = [request.path for request in seen]
    assert statuses.count(ESEARCH) == 4 and statuses.count(EFETCH) == 6
    expected = {
        record.pmid: record
        for record in parse_pubmed_file(FIXTURES / "pubMR_pubmed_result_93articles.xml").records
        if record.entrez_date in ("2017-10-18", "2016-11-29")
    }
    stored = pd.concat(
        pq.read_table(layout.documents_path(PartitionRef.parse(key))).to_pandas()
        for key in partitions
    )
    assert sorted(stored["source_id"]) == sorted(expected)
    for row in stored.itertuples():
        assert row.title == clean_text(expected[row.source_id].title)
        assert row.text == clean_text(expected[row.source_id].abstract)
    metadata = results[0].asset_materializations_for_node("raw_pubmed")[0].metadata
    assert metadata["hits"].value == 2 and metadata["retries"].value == 3


def test_dagster_cli_materializes_a_partition_from_the_repository_without_dagster_home(tmp_path):
    config_path = tmp_path / "medkb.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "start_date": "2016-01-01",
                "topics": {
                    "cancer": {
                        "pubmed_query": "cancer",
                        "keywords": ["cancer"],
                        "sources": ["pubmed"],
                    }
                },
            }
        )
    )
    article_set = (FIXTURES / "pubMR_pubmed_result_93articles.xml").read_bytes()
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DAGSTER_HOME", "NCBI_API_KEY")
    }

    with stand_in_server() as server:
        eutils = NcbiStandIn(server, article_set, by_entrez_day=True)
        server.inject(EFETCH, Reply(429, RATE_LIMIT_BODY), Reply(503, b"Service Unavailable"))
        completed = subprocess.run(
            [
                Path(sys.executable).with_name("dagster"),
                "asset",
                "materialize",
                "-m",
                "medkb_assets.definitions",
                "--select",
                "raw_pubmed,documents",
                "--partition",
                "2017-10-18|cancer",
            ],
            cwd=ROOT,
            env={
                **environment,
                "MEDKB_CONFIG": str(config_path),
                "MEDKB_DATA_DIR": str(tmp_path / "data"),
                "NCBI_EUTILS_URL": eutils.base_url,
            },
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    stored = pq.read_table(tmp_path / "data" / "documents" / "2017-10-18" / "cancer.parquet")
    assert sorted(stored.column("source_id").to_pylist()) == ["29038347", "29038521"]


def test_a_truncated_efetch_answer_is_refetched_not_stored(tmp_path):
    config = _config(tmp_path)
    layout = DataLayout(tmp_path / "data")
    article_set = (FIXTURES / "pubMR_pubmed_result_93articles.xml").read_bytes()

    with stand_in_server() as server:
        eutils = NcbiStandIn(server, article_set, by_entrez_day=True)
        truncated = eutils.article_set.header + eutils.article_set.articles[0][:500]
        server.inject(EFETCH, Reply(200, truncated, "text/xml"))
        result = _materialize(
            config,
            layout.root,
            "2017-10-18|cancer",
            NcbiResource(base_url=eutils.base_url),
            retry_policy=dg.RetryPolicy(max_retries=2, delay=0.01),
        )
        efetches = len(server.requests_to(EFETCH))

    assert result.success
    assert efetches == 2
    stored = pq.read_table(layout.documents_path(PartitionRef.parse("2017-10-18|cancer")))
    assert sorted(stored.column("source_id").to_pylist()) == ["29038347", "29038521"]
