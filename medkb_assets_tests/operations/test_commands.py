"""``medkb audit``, ``medkb stats`` and ``medkb doctor`` over data built by the real stages.

The knowledge base is built from real PubMed records: the NEJM budesonide-formoterol trial
(PMID 29768149) fetched under two topics, and two oncology articles. The trial's partition is
then refetched twice, as PubMed would serve it after a correction of its abstract and after a
retraction; those two later responses are the real record with the abstract's first words
changed and a "Retracted Publication" type added, the two things such updates change.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from medkb_assets.embeddings.cache import embed_partition
from medkb_assets.embeddings.model import EmbeddingModel
from medkb_assets.index.builder import build_index
from medkb_assets.operations.audit import audit_document, collect_stats
from medkb_assets.operations.commands import register
from medkb_assets.storage import DATA_DIR_ENV_VAR, DataLayout, PartitionRef
from medkb_assets_tests.operations.conftest import (
    ASTHMA_TRIAL_PMID,
    ASTHMA_TRIAL_XML,
    NINETY_THREE_ARTICLES_XML,
    fetch_pubmed_partition,
    pubmed_articles,
)

pytestmark = pytest.mark.slow

TRIAL = f"pubmed:{ASTHMA_TRIAL_PMID}"
ASTHMA = PartitionRef("2018-05-17", "asthma")
RESPIRATORY = PartitionRef("2018-05-17", "respiratory")
ONCOLOGY = PartitionRef("2018-12-12", "oncology")
FIRST_FETCH = dt.datetime(2018, 5, 18, 2, 0, tzinfo=dt.UTC)
CORRECTION_FETCH = dt.datetime(2018, 6, 1, 2, 0, tzinfo=dt.UTC)
RETRACTION_FETCH = dt.datetime(2019, 1, 10, 2, 0, tzinfo=dt.UTC)
ORIGINAL_OPENING = "In patients with mild asthma"
CORRECTED_OPENING = "In adults and adolescents with mild asthma"
CONFIG_YAML = """\
start_date: 2018-01-01
retention_days: 36500
topics:
  asthma: {pubmed_query: 'asthma[MeSH Terms]', keywords: [asthma]}
  respiratory: {pubmed_query: 'respiratory tract diseases[MeSH Terms]', keywords: [airway]}
  oncology: {pubmed_query: 'neoplasms[MeSH Terms]', keywords: [cancer]}
"""


@dataclass(frozen=True)
class KnowledgeBase:
    root: Path
    config_path: Path


def _publish(layout: DataLayout, partition: PartitionRef, model: EmbeddingModel) -> None:
    embed_partition(layout.documents_path(partition), layout, partition, model)
    build_index(layout, model.model_id, retention_days=36500, today=dt.date(2019, 2, 1))


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory, embedding_model: EmbeddingModel) -> KnowledgeBase:
    root = tmp_path_factory.mktemp("kb")
    layout = DataLayout(root)
    trial = ASTHMA_TRIAL_XML.read_bytes()
    corrected = trial.replace(ORIGINAL_OPENING.encode(), CORRECTED_OPENING.encode())
    assert corrected != trial
    retracted = corrected.replace(
        b"</PublicationTypeList>",
        b'<PublicationType UI="D016441">Retracted Publication</PublicationType>'
        b"</PublicationTypeList>",
    )
    pmids = [ASTHMA_TRIAL_PMID]

    fetch_pubmed_partition(layout, ASTHMA, trial, FIRST_FETCH, pmids, "asthma[MeSH Terms]")
    fetch_pubmed_partition(layout, RESPIRATORY, trial, FIRST_FETCH, pmids, "airway diseases")
    oncology = pubmed_articles(NINETY_THREE_ARTICLES_XML, 2)
    fetch_pubmed_partition(
        layout, ONCOLOGY, oncology, FIRST_FETCH, ["30527807", "30487607"], "neoplasms"
    )
    embed_partition(layout.documents_path(RESPIRATORY), layout, RESPIRATORY, embedding_model)
    embed_partition(layout.documents_path(ONCOLOGY), layout, ONCOLOGY, embedding_model)
    _publish(layout, ASTHMA, embedding_model)  # v000001: the original abstract

    fetch_pubmed_partition(layout, ASTHMA, corrected, CORRECTION_FETCH, pmids, "asthma[MeSH Terms]")
    _publish(layout, ASTHMA, embedding_model)  # v000002: the corrected abstract

    fetch_pubmed_partition(layout, ASTHMA, retracted, RETRACTION_FETCH, pmids, "asthma[MeSH Terms]")
    _publish(layout, ASTHMA, embedding_model)  # v000003: retracted, so gone

    config_path = root / "medkb.yaml"
    config_path.write_text(CONFIG_YAML)
    return KnowledgeBase(root=root, config_path=config_path)


@pytest.fixture
def medkb_env(monkeypatch, knowledge_base: KnowledgeBase) -> KnowledgeBase:
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(knowledge_base.root))
    monkeypatch.setenv("MEDKB_CONFIG", str(knowledge_base.config_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return knowledge_base


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="medkb")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert args.func is args.handler
    status: int = args.handler(args)
    return status


def test_audit_lists_both_topic_partitions_and_the_versions_that_held_the_document(
    knowledge_base,
):
    audit = audit_document(DataLayout(knowledge_base.root), TRIAL)

    assert audit.partitions == [ASTHMA.key, RESPIRATORY.key]
    assert audit.versions_containing == ["v000001", "v000002"]
    assert [(v.version, v.contains, v.current) for v in audit.index_versions] == [
        ("v000001", True, False),
        ("v000002", True, False),
        ("v000003", False, True),
    ]
    assert audit.removed_from_index is not None
    assert audit.removed_from_index["version"] == "v000003"
    assert audit.removed_from_index["previous_version"] == "v000002"
    assert audit.retracted == {
        "first_seen_fetched_at": RETRACTION_FETCH.isoformat(),
        "seen_in": f"documents:{ASTHMA.key}",
    }
    assert audit.deleted is None


def test_audit_reads_fetch_times_and_request_parameters_from_the_raw_fetch(knowledge_base):
    audit = audit_document(DataLayout(knowledge_base.root), TRIAL)

    asthma, respiratory = audit.appearances
    assert asthma.fetched_at == RETRACTION_FETCH.isoformat() and asthma.retracted
    assert asthma.fetch is not None and asthma.fetch.latest
    assert asthma.fetch.folder == "raw/pubmed/2018-05-17/asthma/20190110T020000000000Z"
    assert asthma.fetch.query == "asthma[MeSH Terms]"
    assert asthma.fetch.mode == "eutils"
    assert asthma.fetch.parameters == [
        {"db": "pubmed", "id": ASTHMA_TRIAL_PMID, "retmode": "xml", "rettype": "abstract"}
    ]
    assert asthma.raw_path == f"{asthma.fetch.folder}/0001-efetch.xml.gz"
    assert respiratory.fetch is not None and respiratory.fetch.query == "airway diseases"
    assert respiratory.topics == ["respiratory"]


def test_audit_traces_content_hashes_over_raw_fetches_partitions_and_index_versions(
    knowledge_base,
):
    audit = audit_document(DataLayout(knowledge_base.root), TRIAL)

    assert [(o.folder.split("/")[3], o.fetched_at, o.retracted) for o in audit.raw_history] == [
        ("asthma", FIRST_FETCH.isoformat(), False),
        ("respiratory", FIRST_FETCH.isoformat(), False),
        ("asthma", CORRECTION_FETCH.isoformat(), False),
        ("asthma", RETRACTION_FETCH.isoformat(), True),
    ]
    original, corrected = audit.content_versions
    assert original.content_hash != corrected.content_hash
    assert (original.first_fetched_at, original.last_fetched_at) == (
        FIRST_FETCH.isoformat(),
        FIRST_FETCH.isoformat(),
    )
    assert f"documents:{RESPIRATORY.key}" in original.seen_in
    assert "index:v000001" in original.seen_in
    assert (corrected.first_fetched_at, corrected.last_fetched_at) == (
        CORRECTION_FETCH.isoformat(),
        RETRACTION_FETCH.isoformat(),
    )
    assert "index:v000002" in corrected.seen_in
    assert [change["change"] for change in audit.index_changes] == ["updated", "removed"]


def test_audit_command_prints_partitions_versions_and_removal(medkb_env, capsys):
    status = _run("audit", TRIAL)

    out = capsys.readouterr().out
    assert status == 0
    assert ASTHMA.key in out and RESPIRATORY.key in out
    assert "v000001" in out and "v000002" in out
    assert "request: db=pubmed, id=29768149, retmode=xml, rettype=abstract" in out
    assert "removed from index: v000003" in out
    assert "retracted: first seen in a fetch of 2019-01-10T02:00:00+00:00" in out


def test_audit_command_json_and_unknown_document(medkb_env, capsys):
    assert _run("audit", TRIAL, "--json", "--no-raw-history") == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["partitions"] == [ASTHMA.key, RESPIRATORY.key]
    assert payload["index_versions_containing"] == ["v000001", "v000002"]
    assert payload["raw_history"] == []

    assert _run("audit", "pubmed:1") == 1
    assert "no documents partition or index version mentions it" in capsys.readouterr().out


def test_stats_counts_current_index_documents_per_topic_and_source(medkb_env, capsys):
    stats = collect_stats(DataLayout(medkb_env.root))

    assert stats.index_version == "v000003"
    assert stats.vectors == 2
    assert stats.by_source == {"pubmed": 2}
    assert stats.by_topic == {"asthma": 0, "oncology": 2, "respiratory": 0}
    assert stats.by_topic_and_source["oncology"] == {"pubmed": 2}
    assert stats.last_update == {
        "asthma": "2018-05-17",
        "oncology": "2018-12-12",
        "respiratory": "2018-05-17",
    }

    assert _run("stats", "--json") == 0
    assert json.loads(capsys.readouterr().out)["by_topic"]["oncology"] == 2
    assert _run("stats") == 0
    out = capsys.readouterr().out
    assert "index v000003: 2 documents" in out
    assert "oncology" in out and "2018-12-12" in out


def test_doctor_fails_and_reports_every_line_when_the_index_is_missing(
    tmp_path, monkeypatch, capsys, embedding_model
):
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(tmp_path / "data"))
    monkeypatch.delenv("MEDKB_CONFIG", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)

    status = _run("doctor")

    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    by_name = {line.split()[1]: line for line in lines[:-1]}
    assert by_name["config"].startswith("OK")
    assert by_name["data_dir"].startswith("OK")
    assert by_name["embedding_model"].startswith("OK")
    assert embedding_model.model_id in by_name["embedding_model"]
    assert by_name["index"].startswith("FAIL")
    assert "no FAISS index" in by_name["index"]
    assert by_name["daemon"].startswith("FAIL") and "DAGSTER_HOME is not set" in by_name["daemon"]
    updates = [line for name, line in by_name.items() if name.startswith("updates:")]
    assert updates and all(line.startswith("FAIL") for line in updates)
    assert all("no documents partition yet (from documents/ files)" in line for line in updates)
    assert lines[-1].endswith("checks failed")


def test_doctor_passes_with_a_live_daemon_an_index_and_recent_updates(
    medkb_env, tmp_path, monkeypatch, capsys
):
    from dagster._daemon.types import DaemonHeartbeat

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    with dg.DagsterInstance.get() as instance:
        for daemon_type in instance.get_required_daemon_types():
            instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), daemon_type, "d1"))
        for topic in ("asthma", "oncology", "respiratory"):
            instance.report_runless_asset_event(
                dg.AssetMaterialization("documents", partition=f"{yesterday}|{topic}")
            )

    status = _run("doctor", "--json")

    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True, report
    assert status == 0
    checks = {check["name"]: check for check in report["checks"]}
    assert "v000003: 2 vectors" in checks["index"]["detail"]
    assert "daemons alive" in checks["daemon"]["detail"]
    assert checks["updates:asthma"]["detail"].startswith(f"latest partition {yesterday}")
    assert "from the Dagster instance" in checks["updates:asthma"]["detail"]
