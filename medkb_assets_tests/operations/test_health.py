"""Freshness checks judge the index and each topic's documents from the instance's records."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import dagster as dg

from medkb_assets.config import MedkbConfig, TopicConfig
from medkb_assets.operations.health import (
    DOCUMENTS_ASSET,
    DOCUMENTS_MAX_AGE,
    FRESH_UNTIL,
    INDEX_ASSET,
    INDEX_CHECK,
    INDEX_MAX_AGE,
    LAST_UPDATED,
    TopicUpdate,
    _freshness_result,
    build_freshness_checks,
    build_freshness_sensor,
    documents_updates_by_topic,
    latest_partition_dates_from_files,
    topic_check_name,
)
from medkb_assets.partitions import build_partitions
from medkb_assets.storage import DataLayout, PartitionRef

TOPICS = ("asthma", "copd", "diabetes")


def _config() -> MedkbConfig:
    topic = TopicConfig(pubmed_query="q", keywords=("k",))
    return MedkbConfig(start_date=dt.date(2026, 1, 1), topics=dict.fromkeys(TOPICS, topic))


def _definitions(checks: list[dg.AssetChecksDefinition]) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            dg.AssetSpec("documents", partitions_def=build_partitions(_config())),
            dg.AssetSpec("faiss_index", deps=["documents"]),
        ],
        asset_checks=checks,
        jobs=[dg.define_asset_job("freshness", selection=dg.AssetSelection.checks(*checks))],
    )


def _materialize(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()
    }


def test_each_topic_is_judged_by_its_own_latest_documents_partition():
    checks = build_freshness_checks(_config())
    with dg.instance_for_test() as instance:
        _materialize(instance, "documents", "2026-11-01|asthma")
        _materialize(instance, "documents", "2026-11-03|asthma")
        _materialize(instance, "documents", "2026-11-02|asthma")
        _materialize(instance, "documents", "2026-10-30|copd")

        result = (
            _definitions(checks).resolve_job_def("freshness").execute_in_process(instance=instance)
        )
        updates = documents_updates_by_topic(instance, TOPICS)

    evaluations = _evaluations(result)
    asthma = evaluations[topic_check_name("asthma")]
    diabetes = evaluations[topic_check_name("diabetes")]
    assert asthma.passed and evaluations[topic_check_name("copd")].passed
    assert not diabetes.passed
    assert "never been materialized" in (diabetes.description or "")
    assert asthma.metadata["last_partition_materialized"].value == "2026-11-02|asthma"
    assert asthma.metadata["latest_partition_date"].value == "2026-11-03"
    fresh_until = asthma.metadata[FRESH_UNTIL].value
    assert abs(fresh_until - (time.time() + DOCUMENTS_MAX_AGE.total_seconds())) < 120
    assert updates["asthma"].partitions == 3
    assert updates["copd"].latest_partition_date == "2026-10-30"
    assert updates["diabetes"] == TopicUpdate("diabetes", None, None, None, 0)


def test_index_check_fails_until_the_index_is_materialized():
    checks = build_freshness_checks(_config())
    job = _definitions(checks).resolve_job_def("freshness")
    with dg.instance_for_test() as instance:
        before = _evaluations(job.execute_in_process(instance=instance))[INDEX_CHECK]
        _materialize(instance, "faiss_index")
        after = _evaluations(job.execute_in_process(instance=instance))[INDEX_CHECK]

    assert not before.passed
    assert before.severity == dg.AssetCheckSeverity.ERROR
    assert after.passed
    assert LAST_UPDATED in after.metadata


def test_an_update_older_than_the_window_is_stale():
    now = time.time()
    two_days_ago = now - 27 * 3600

    stale = _freshness_result(INDEX_ASSET, INDEX_CHECK, two_days_ago, now, INDEX_MAX_AGE, "i", {})
    fresh = _freshness_result(
        DOCUMENTS_ASSET, "freshness_asthma", two_days_ago, now, DOCUMENTS_MAX_AGE, "t", {}
    )

    assert not stale.passed
    assert "stale: last updated 27.0 hours ago (allowed 26)" in (stale.description or "")
    assert FRESH_UNTIL not in stale.metadata
    assert fresh.passed


def test_freshness_sensor_requests_checks_that_never_ran_and_starts_running():
    checks = build_freshness_checks(_config())
    sensor = build_freshness_sensor(checks)

    with dg.instance_for_test() as instance:
        request = sensor(dg.build_sensor_context(instance=instance))

    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert isinstance(request, dg.RunRequest)
    assert set(request.asset_check_keys or []) == {
        dg.AssetCheckKey(INDEX_ASSET, INDEX_CHECK),
        *(dg.AssetCheckKey(DOCUMENTS_ASSET, topic_check_name(topic)) for topic in TOPICS),
    }


def test_latest_partition_per_topic_is_read_from_documents_files(tmp_path: Path):
    layout = DataLayout(tmp_path)
    for day, topic in (("2026-11-01", "asthma"), ("2026-11-04", "asthma"), ("2026-10-01", "copd")):
        path = layout.documents_path(PartitionRef(day, topic))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (layout.documents_dir / "scratch").mkdir()
    (layout.documents_dir / "scratch" / "asthma.parquet").write_bytes(b"")

    assert latest_partition_dates_from_files(layout) == {
        "asthma": "2026-11-04",
        "copd": "2026-10-01",
    }
