"""The webserver and daemon of ``dagster dev``, driven through the GraphQL API the web UI uses."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from medkb_assets.storage import DataLayout, PartitionRef
from medkb_assets_tests.service.conftest import (
    BACKFILL_STATUS,
    LOCATION_NAME,
    REPOSITORY_NAME,
    DagsterService,
    ExpectedDefinitions,
    SampleMaterialization,
)

pytestmark = pytest.mark.slow

CONTRACT_ASSET_KEYS = {
    "raw_pubmed",
    "raw_who",
    "raw_cdc",
    "raw_medlineplus",
    "documents",
    "embeddings",
    "faiss_index",
}

REPOSITORY_CONTENTS = """
query RepositoryContents($selector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $selector) {
    __typename
    ... on Repository {
      jobs { name }
      schedules { name scheduleState { status } }
      sensors { name sensorState { status } }
      assetNodes {
        assetKey { path }
        assetChecksOrError {
          __typename
          ... on AssetChecks { checks { name } }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

DAEMON_HEALTH = """
query DaemonHealth {
  instance {
    daemonHealth {
      allDaemonStatuses { daemonType required healthy lastHeartbeatErrors { message } }
    }
  }
}
"""


def _repository(service: DagsterService) -> dict:
    selector = {"repositoryName": REPOSITORY_NAME, "repositoryLocationName": LOCATION_NAME}
    repository = service.graphql(REPOSITORY_CONTENTS, selector=selector)["repositoryOrError"]
    assert repository["__typename"] == "Repository", repository
    return repository


def test_webserver_loads_every_asset_and_asset_check_of_the_code_location(
    dagster_service: DagsterService, expected_definitions: ExpectedDefinitions
):
    repository = _repository(dagster_service)
    served_checks = {
        "/".join(node["assetKey"]["path"]): sorted(
            check["name"] for check in node["assetChecksOrError"].get("checks", [])
        )
        for node in repository["assetNodes"]
    }

    assert CONTRACT_ASSET_KEYS <= set(expected_definitions.asset_keys)
    assert sorted(served_checks) == expected_definitions.asset_keys
    assert {
        key: names for key, names in served_checks.items() if names
    } == expected_definitions.asset_checks


def test_webserver_loads_the_jobs_and_the_daemon_runs_every_schedule_and_sensor_as_defined(
    dagster_service: DagsterService, expected_definitions: ExpectedDefinitions
):
    repository = _repository(dagster_service)
    jobs = {job["name"] for job in repository["jobs"]}
    schedules = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}

    assert "daily_update" in expected_definitions.jobs
    assert set(expected_definitions.jobs) <= jobs
    assert schedules["daily_update_schedule"] == "RUNNING"
    assert schedules == expected_definitions.schedules
    assert sensors["index_automation"] == "RUNNING"
    assert sensors == expected_definitions.sensors


def test_every_required_daemon_reports_a_healthy_heartbeat(dagster_service: DagsterService):
    def all_healthy() -> list[dict] | None:
        health = dagster_service.graphql(DAEMON_HEALTH)["instance"]["daemonHealth"]
        required = [d for d in health["allDaemonStatuses"] if d["required"]]
        return required if required and all(d["healthy"] for d in required) else None

    # A daemon's first heartbeat can lag the webserver's start by a few seconds.
    required = dagster_service.wait_for("every required daemon to be healthy", all_healthy, 60)

    assert {"SCHEDULER", "SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR", "ASSET"} <= {
        daemon["daemonType"] for daemon in required
    }


def test_backfill_of_sample_partitions_materializes_every_asset_of_the_daily_job(
    dagster_service: DagsterService,
    expected_definitions: ExpectedDefinitions,
    materialized_sample: SampleMaterialization,
):
    partitions = materialized_sample.partitions
    run_ids = {run["runId"] for run in materialized_sample.backfill_runs}
    layout = DataLayout(dagster_service.data_dir)

    def backfill_completed() -> str | None:
        backfill = dagster_service.graphql(
            BACKFILL_STATUS, backfillId=materialized_sample.backfill_id
        )["partitionBackfillOrError"]
        return backfill["status"] if backfill["status"].startswith("COMPLETED") else None

    status = dagster_service.wait_for("the backfill to complete", backfill_completed, 90)

    assert status == "COMPLETED_SUCCESS"
    assert sorted(
        _tag(run, "dagster/partition") for run in materialized_sample.backfill_runs
    ) == sorted(partitions)
    assert {run["jobName"] for run in materialized_sample.backfill_runs} == {"daily_update"}
    for asset_key in expected_definitions.daily_job_assets:
        events = dagster_service.materializations(asset_key, partitions)
        assert sorted(e["partition"] for e in events if e["runId"] in run_ids) == sorted(
            partitions
        ), f"{asset_key} was not materialized once per backfilled partition: {events}"
    for partition in partitions:
        assert layout.documents_path(PartitionRef.parse(partition)).is_file()


def test_faiss_index_is_rebuilt_by_the_automation_sensor_after_the_backfill(
    dagster_service: DagsterService,
    expected_definitions: ExpectedDefinitions,
    materialized_sample: SampleMaterialization,
):
    index_run = materialized_sample.index_run
    latest = dagster_service.materializations("faiss_index", limit=1)[0]
    metadata = {
        entry["label"]: entry.get("text", entry.get("intValue"))
        for entry in latest["metadataEntries"]
    }
    events = dagster_service.run_events(index_run["runId"])
    planned_checks = {
        e["checkName"] for e in events if e["__typename"] == "AssetCheckEvaluationPlannedEvent"
    }
    check_outcomes = {
        e["evaluation"]["checkName"]: e["evaluation"]["success"]
        for e in events
        if e["__typename"] == "AssetCheckEvaluationEvent"
    }

    assert index_run["status"] == "SUCCESS"
    assert _tag(index_run, "dagster/from_automation_condition") == "true"
    assert latest["runId"] == index_run["runId"]
    assert metadata["index_version"] == materialized_sample.index_version
    assert metadata["vectors"] == _indexable_documents(dagster_service, materialized_sample)
    assert planned_checks, "the index run executed none of the index's asset checks"
    assert planned_checks <= set(expected_definitions.asset_checks["faiss_index"])
    assert check_outcomes == dict.fromkeys(planned_checks, True)


def _indexable_documents(service: DagsterService, sample: SampleMaterialization) -> int:
    layout = DataLayout(service.data_dir)
    doc_ids: set[str] = set()
    for partition in sample.partitions:
        table = pq.read_table(
            layout.documents_path(PartitionRef.parse(partition)),
            columns=["doc_id", "retracted", "deleted"],
        )
        for row in table.to_pylist():
            if not row["retracted"] and not row["deleted"]:
                doc_ids.add(row["doc_id"])
    return len(doc_ids)


def _tag(run: dict, key: str) -> str | None:
    return next((tag["value"] for tag in run["tags"] if tag["key"] == key), None)
