"""The code location: what it loads, how the schedule fans out, and Dagster's own validation."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from medkb_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
ASSET_KEYS = {
    "raw_pubmed",
    "raw_who",
    "raw_cdc",
    "raw_medlineplus",
    "documents",
    "embeddings",
    "faiss_index",
}


def test_every_contract_asset_key_is_defined_with_a_description_and_retry_policy():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}

    assert ASSET_KEYS <= keys
    for key in ASSET_KEYS:
        node = graph.get(dg.AssetKey(key))
        assert node.description and len(node.description) > 60
    for assets_def in defs.assets:
        assert assets_def.op.retry_policy is not None
        assert assets_def.op.retry_policy.max_retries == 3


def test_partition_keys_read_date_then_topic():
    partitions = defs.resolve_assets_def("documents").partitions_def

    assert partitions.has_partition_key("2025-01-01|diabetes")
    assert partitions.has_partition_key("2025-06-30|infectious_outbreaks")


def test_raw_pubmed_is_in_the_ncbi_pool_and_the_daily_job_has_a_run_time_limit():
    job = defs.resolve_job_def("daily_update")

    assert defs.resolve_assets_def("raw_pubmed").op.pool == "ncbi"
    assert job.tags["dagster/max_runtime"] == "3600"


def test_schedule_runs_at_two_utc_and_emits_one_run_per_topic_for_the_previous_day():
    schedule = defs.resolve_schedule_def("daily_update_schedule")
    tick = dt.datetime(2026, 11, 3, 2, 0, tzinfo=dt.UTC)

    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
        requests = schedule.evaluate_tick(context).run_requests

    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert sorted(request.partition_key for request in requests) == sorted(
        f"2026-11-02|{topic}"
        for topic in (
            "asthma",
            "cancer",
            "dementia",
            "diabetes",
            "heart_disease",
            "hypertension",
            "infectious_outbreaks",
            "stroke",
        )
    )


def test_loading_definitions_does_not_import_torch_faiss_or_sentence_transformers():
    probe = (
        "import sys, medkb_assets.definitions;"
        "print(sorted(m for m in ('torch', 'faiss', 'sentence_transformers') if m in sys.modules))"
    )
    started = time.monotonic()
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout

    assert output.strip() == "[]"
    assert time.monotonic() - started < 20


def test_dagster_definitions_validate_accepts_the_code_location(tmp_path):
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    completed = subprocess.run(
        [
            Path(sys.executable).with_name("dagster"),
            "definitions",
            "validate",
            "-m",
            "medkb_assets.definitions",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=300,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Validation successful" in completed.stdout + completed.stderr


def test_an_invalid_configuration_fails_definition_loading_naming_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("start_date: 2025-01-01\nmax_records_per_partition: -5\ntopics: {}\n")
    environment = {**os.environ, "MEDKB_CONFIG": str(bad)}

    completed = subprocess.run(
        [sys.executable, "-c", "import medkb_assets.definitions"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
    )

    assert completed.returncode != 0
    assert str(bad) in completed.stderr
    assert "max_records_per_partition" in completed.stderr


def test_a_catch_up_run_at_noon_utc_fetches_the_same_day_once_it_has_closed_in_new_york():
    schedule = defs.resolve_schedule_def("daily_catch_up_schedule")
    tick = dt.datetime(2026, 11, 3, 12, 0, tzinfo=dt.UTC)

    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
        requests = schedule.evaluate_tick(context).run_requests

    assert schedule.cron_schedule == "0 12 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert {request.partition_key.split("|")[0] for request in requests} == {"2026-11-02"}
    assert len(requests) == 8
