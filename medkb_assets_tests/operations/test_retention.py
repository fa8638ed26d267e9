"""Retention removes expired partitions and old index versions, and nothing else."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import dagster as dg
import pytest

from medkb_assets.config import MedkbConfig, TopicConfig
from medkb_assets.embeddings.cache import embed_partition
from medkb_assets.embeddings.model import EmbeddingModel
from medkb_assets.index.builder import build_index
from medkb_assets.index.store import CURRENT_FILE, load_current_index, read_current_version
from medkb_assets.operations.retention import (
    RETENTION_LOG_FILE,
    apply_retention,
    build_retention_job,
    build_retention_schedule,
)
from medkb_assets.resources import DataDirResource
from medkb_assets.storage import DataLayout, PartitionRef
from medkb_assets_tests.operations.conftest import (
    ASTHMA_TRIAL_PMID,
    ASTHMA_TRIAL_XML,
    NINETY_THREE_ARTICLES_XML,
    fetch_pubmed_partition,
    pubmed_articles,
)

TODAY = dt.date(2026, 6, 1)
RETENTION_DAYS = 30  # cutoff 2026-05-02: partitions dated before it are expired
EXPIRED_DAYS = ("2026-03-15", "2026-05-01")
KEPT_DAYS = ("2026-05-02", "2026-05-30")
MODEL_SLUG = "sentence-transformers--all-MiniLM-L6-v2@0123456789ab"


def _config(retention_days: int = RETENTION_DAYS) -> MedkbConfig:
    topic = TopicConfig(pubmed_query="asthma[MeSH Terms]", keywords=("asthma",))
    return MedkbConfig(
        start_date=dt.date(2026, 1, 1),
        retention_days=retention_days,
        topics={"asthma": topic, "copd": topic},
    )


def _write(path: Path, payload: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def _data_dir_of_several_days(root: Path) -> DataLayout:
    """Lays out raw, documents, embeddings and index files as the pipeline names them."""
    layout = DataLayout(root)
    for day in (*EXPIRED_DAYS, *KEPT_DAYS):
        for source, topic in (("pubmed", "asthma"), ("pubmed", "copd"), ("who", "asthma")):
            partition_dir = layout.raw_dir(source, PartitionRef(day, topic))
            _write(partition_dir / "20260602T020000000000Z" / "0001-efetch.xml.gz")
            _write(partition_dir / "20260602T020000000000Z" / "fetch.json", b"{}")
            _write(partition_dir / "latest.json", b"{}")
        for topic in ("asthma", "copd"):
            _write(layout.documents_path(PartitionRef(day, topic)))
            _write(layout.embeddings_dir / MODEL_SLUG / "partitions" / day / f"{topic}.parquet")

    # Things that belong to no partition day and must survive whatever their age.
    _write(layout.embeddings_dir / MODEL_SLUG / "model.json", b"{}")
    _write(layout.embeddings_dir / MODEL_SLUG / "vectors.sqlite")
    _write(layout.documents_dir / "notes" / "old.parquet")
    _write(layout.root / "raw" / "pubmed" / "README.txt")
    _write(layout.dagster_dir / "history" / "runs.db")

    # Eight versions, CURRENT on an old one (a rollback): it must never be removed.
    for number in range(1, 9):
        for name in ("index.faiss", "manifest.parquet", "summary.json"):
            _write(layout.index_dir / f"v{number:06d}" / name)
    _write(layout.index_dir / CURRENT_FILE, b"v000002\n")
    return layout


def _files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def _expired_files(files: set[str]) -> set[str]:
    partition_files = {name for name in files for day in EXPIRED_DAYS if f"/{day}/" in f"/{name}"}
    pruned_versions = ("v000001", "v000003", "v000004", "v000005")
    index_files = {
        name
        for name in files
        for version in pruned_versions
        if name.startswith(f"index/{version}/")
    }
    return partition_files | index_files


def test_retention_removes_exactly_the_expired_partitions_and_old_index_versions(tmp_path):
    layout = _data_dir_of_several_days(tmp_path)
    before = _files(tmp_path)

    report = apply_retention(layout, _config(), TODAY, keep_index_versions=3)

    after = _files(tmp_path)
    assert before - after == _expired_files(before)
    # The log, and the index builders' lock file that pruning takes.
    assert after - before == {RETENTION_LOG_FILE, "index/.lock"}
    assert report.cutoff == dt.date(2026, 5, 2)
    assert report.counts() == {"raw": 6, "documents": 4, "embeddings": 4, "index": 4}
    assert read_current_version(layout.index_dir) == "v000002"
    assert sorted(p.name for p in layout.index_dir.iterdir() if p.name.startswith("v")) == [
        "v000002",
        "v000006",
        "v000007",
        "v000008",
    ]
    for day in EXPIRED_DAYS:
        assert not (layout.documents_dir / day).exists()
        assert not (layout.root / "raw" / "pubmed" / day).exists()
        assert not (layout.embeddings_dir / MODEL_SLUG / "partitions" / day).exists()


def test_retention_log_records_every_removed_path_once_per_run(tmp_path):
    layout = _data_dir_of_several_days(tmp_path)

    report = apply_retention(layout, _config(), TODAY, keep_index_versions=3)
    apply_retention(layout, _config(), TODAY, keep_index_versions=3)

    lines = (tmp_path / RETENTION_LOG_FILE).read_text().splitlines()
    assert len(lines) == 1, "a run that removes nothing leaves no log line"
    record = json.loads(lines[0])
    assert record["cutoff"] == "2026-05-02"
    assert record["counts"] == report.counts()
    logged = {(entry["kind"], entry["path"]) for entry in record["paths"]}
    assert ("raw", "raw/who/2026-03-15/asthma") in logged
    assert ("documents", "documents/2026-05-01/copd.parquet") in logged
    assert ("embeddings", f"embeddings/{MODEL_SLUG}/partitions/2026-05-01/asthma.parquet") in logged
    assert ("index", "index/v000005") in logged
    assert not any("2026-05-02" in path for _, path in logged)
    raw_entry = next(e for e in record["paths"] if e["path"] == "raw/pubmed/2026-03-15/asthma")
    assert (raw_entry["files"], raw_entry["partition_date"]) == (3, "2026-03-15")


def test_dry_run_reports_what_would_go_and_removes_nothing(tmp_path):
    layout = _data_dir_of_several_days(tmp_path)
    before = _files(tmp_path)

    report = apply_retention(layout, _config(), TODAY, keep_index_versions=3, dry_run=True)

    assert _files(tmp_path) == before
    assert report.counts() == {"raw": 6, "documents": 4, "embeddings": 4, "index": 4}


def test_nothing_is_removed_when_every_partition_is_inside_the_window(tmp_path):
    layout = _data_dir_of_several_days(tmp_path)
    before = _files(tmp_path)

    report = apply_retention(layout, _config(retention_days=3650), TODAY, keep_index_versions=10)

    assert _files(tmp_path) - {"index/.lock"} == before
    assert report.removed == []


def test_retention_job_records_counts_and_a_table_of_paths(tmp_path):
    layout = DataLayout(tmp_path)
    today = dt.datetime.now(dt.UTC).date()
    expired = (today - dt.timedelta(days=40)).isoformat()
    kept = (today - dt.timedelta(days=3)).isoformat()
    for day in (expired, kept):
        _write(layout.documents_path(PartitionRef(day, "asthma")))
        _write(layout.raw_dir("pubmed", PartitionRef(day, "asthma")) / "latest.json")
    job = build_retention_job(_config())

    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance, resources={"data_dir": DataDirResource(path=str(tmp_path))}
        )

    assert result.success
    output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    metadata = output.step_output_data.metadata
    assert metadata["documents_files_removed"].value == 1
    assert metadata["raw_partitions_removed"].value == 1
    paths = [record.data["path"] for record in metadata["removed"].value.records]
    assert paths == [f"raw/pubmed/{expired}/asthma", f"documents/{expired}/asthma.parquet"]
    assert result.output_for_node("apply_retention") == {
        "raw": 1,
        "documents": 1,
        "embeddings": 0,
        "index": 0,
    }
    assert layout.documents_path(PartitionRef(kept, "asthma")).exists()
    assert job.tags["dagster/max_runtime"] == "3600"


def test_retention_schedule_runs_weekly_and_starts_running():
    schedule = build_retention_schedule(build_retention_job(_config()))

    assert schedule.cron_schedule == "30 3 * * 0"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "retention"


@pytest.mark.slow
def test_expired_partition_leaves_the_index_at_its_next_build_and_current_files_survive(
    tmp_path, embedding_model: EmbeddingModel
):
    layout = DataLayout(tmp_path)
    old = PartitionRef("2026-04-20", "asthma")
    recent = PartitionRef("2026-05-20", "asthma")
    fetched_at = dt.datetime(2026, 5, 21, 2, 0, tzinfo=dt.UTC)
    # The same real trial under an old and a recent partition, plus three other real articles
    # only under the old one: retention must drop those three and keep the trial.
    old_xml = pubmed_articles(NINETY_THREE_ARTICLES_XML, 3)
    for partition, xml, pmids in (
        (old, old_xml, ["old"]),
        (recent, ASTHMA_TRIAL_XML.read_bytes(), [ASTHMA_TRIAL_PMID]),
    ):
        path = fetch_pubmed_partition(layout, partition, xml, fetched_at, pmids, "asthma")
        embed_partition(path, layout, partition, embedding_model)
    # Dates of the articles themselves are years old; a wide window keeps the builder's own
    # date-based retention out of the way, so only the removed partition files matter.
    build_index(layout, embedding_model.model_id, retention_days=36500, today=TODAY)
    first = load_current_index(layout.index_dir)
    old_docs = set(first.manifest["doc_id"]) - {f"pubmed:{ASTHMA_TRIAL_PMID}"}
    assert len(old_docs) == 3

    # The content-hash cache spares vectors cached in the second retention starts.
    time.sleep(1.1)
    report = apply_retention(layout, _config(), TODAY, keep_index_versions=1)
    assert (layout.index_dir / first.version / "index.faiss").exists()
    assert sum(report.cached_vectors_removed.values()) == 3
    build_index(layout, embedding_model.model_id, retention_days=36500, today=TODAY)

    second = load_current_index(layout.index_dir)
    assert second.version != first.version
    assert set(second.manifest["doc_id"]) == {f"pubmed:{ASTHMA_TRIAL_PMID}"}
    assert second.index.ntotal == 1
