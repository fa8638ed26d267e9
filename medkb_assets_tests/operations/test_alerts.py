"""Alert sensors POST failures to a real loopback webhook and never reveal its URL."""

from __future__ import annotations

import datetime as dt
import logging
import socket

import dagster as dg
import pytest

from medkb_assets.config import MedkbConfig, TopicConfig
from medkb_assets.operations.alerts import (
    UI_URL_ENV_VAR,
    WEBHOOK_ENV_VAR,
    AlertDeliveryError,
    failed_check_alert,
    post_alert,
    run_failure_alert,
)
from medkb_assets.partitions import build_partitions
from medkb_assets_tests.operations.conftest import WebhookReceiver

SECRET_PATH = "/hooks/T0001/B0002/s3cr3t-t0ken-in-the-path"
UI_URL = "https://medkb.example.org"
PARTITION = "2026-11-02|asthma"


def _partitions() -> dg.MultiPartitionsDefinition:
    topic = TopicConfig(pubmed_query="asthma[MeSH Terms]", keywords=("asthma",))
    config = MedkbConfig(start_date=dt.date(2026, 11, 1), topics={"asthma": topic})
    return build_partitions(config)


@dg.asset(name="documents", partitions_def=_partitions())
def failing_documents() -> None:
    raise ValueError("NCBI answered 502 three times for esearch")


def _failed_run(instance: dg.DagsterInstance) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    job = dg.define_asset_job("daily_update", selection=[failing_documents])
    defs = dg.Definitions(assets=[failing_documents], jobs=[job])
    result = defs.resolve_job_def("daily_update").execute_in_process(
        instance=instance, partition_key=PARTITION, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return result.dagster_run, failure


@pytest.fixture
def alert_env(monkeypatch, webhook_receiver: WebhookReceiver) -> WebhookReceiver:
    monkeypatch.setenv(WEBHOOK_ENV_VAR, webhook_receiver.url(SECRET_PATH))
    monkeypatch.setenv(UI_URL_ENV_VAR, UI_URL)
    return webhook_receiver


def test_run_failure_sensor_posts_the_run_step_and_error_to_the_webhook(alert_env, caplog):
    caplog.set_level(logging.DEBUG)
    with dg.instance_for_test() as instance:
        run, failure = _failed_run(instance)
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()

        run_failure_alert(context)

    [alert] = alert_env.received
    assert alert.path == SECRET_PATH
    assert alert.content_type == "application/json"
    assert alert.body == {
        "kind": "run_failure",
        "run_id": run.run_id,
        "job": "daily_update",
        "partition": PARTITION,
        "failing_step": "documents",
        "error_summary": alert.body["error_summary"],
        "run_url": f"{UI_URL}/runs/{run.run_id}",
        "check": None,
    }
    assert "NCBI answered 502 three times for esearch" in alert.body["error_summary"]
    assert alert.body["error_summary"].startswith("ValueError")
    assert "webhook configured" in caplog.text
    assert "s3cr3t-t0ken" not in caplog.text
    assert alert_env.base_url not in caplog.text


def test_run_failure_sensor_skips_without_a_webhook(monkeypatch, webhook_receiver):
    monkeypatch.delenv(WEBHOOK_ENV_VAR, raising=False)
    with dg.instance_for_test() as instance:
        run, failure = _failed_run(instance)
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()

        outcome = run_failure_alert(context)

    assert isinstance(outcome, dg.SkipReason)
    assert WEBHOOK_ENV_VAR in (outcome.skip_message or "")
    assert webhook_receiver.received == []


@dg.asset(name="faiss_index")
def index_with_checks() -> None:
    return None


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec("vector_counts_match", asset="faiss_index", blocking=True),
        dg.AssetCheckSpec("preview_looks_sensible", asset="faiss_index", blocking=False),
    ]
)
def index_checks():
    yield dg.AssetCheckResult(
        asset_key="faiss_index",
        check_name="vector_counts_match",
        passed=False,
        description="index holds 10 vectors but the manifest 11 rows",
    )
    yield dg.AssetCheckResult(
        asset_key="faiss_index", check_name="preview_looks_sensible", passed=False
    )


def _run_failing_checks(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [index_with_checks, index_checks], instance=instance, raise_on_error=False
    )


def test_failed_blocking_check_is_posted_once_and_non_blocking_failures_are_not(alert_env, caplog):
    caplog.set_level(logging.DEBUG)
    with dg.instance_for_test() as instance:
        result = _run_failing_checks(instance)
        context = dg.build_sensor_context(instance=instance)

        failed_check_alert(context)
        cursor = context.cursor
        failed_check_alert(dg.build_sensor_context(instance=instance, cursor=cursor))

    [alert] = alert_env.received
    assert alert.body["kind"] == "check_failure"
    assert alert.body["check"] == "faiss_index:vector_counts_match"
    assert alert.body["run_id"] == result.run_id
    assert alert.body["run_url"] == f"{UI_URL}/runs/{result.run_id}"
    assert alert.body["error_summary"] == "index holds 10 vectors but the manifest 11 rows"
    assert alert.body["failing_step"] == "index_checks"
    assert alert.body["job"] == result.job_def.name
    assert cursor is not None
    assert "s3cr3t-t0ken" not in caplog.text


def test_check_alert_is_retried_on_the_next_tick_when_delivery_fails(alert_env):
    alert_env.answer_next(500, 500, 500)
    with dg.instance_for_test() as instance:
        _run_failing_checks(instance)
        context = dg.build_sensor_context(instance=instance)

        with pytest.raises(AlertDeliveryError):
            failed_check_alert(context)
        failed_check_alert(dg.build_sensor_context(instance=instance, cursor=context.cursor))

    statuses = [alert.body["check"] for alert in alert_env.received]
    assert statuses == ["faiss_index:vector_counts_match"] * 4


def test_transient_webhook_errors_are_retried_with_backoff(webhook_receiver, caplog):
    caplog.set_level(logging.DEBUG)
    webhook_receiver.answer_next(503, 429)
    waits: list[float] = []

    delivered = post_alert(
        {"kind": "run_failure", "run_id": "r1"},
        url=webhook_receiver.url(SECRET_PATH),
        attempts=3,
        sleep=waits.append,
    )

    assert delivered is True
    assert len(webhook_receiver.received) == 3
    assert len(waits) == 2 and all(0 <= wait <= 4.0 for wait in waits)
    assert "s3cr3t-t0ken" not in caplog.text


def test_refused_alert_fails_at_once_without_naming_the_url(webhook_receiver):
    webhook_receiver.answer_next(404)

    with pytest.raises(AlertDeliveryError) as raised:
        post_alert({"kind": "run_failure"}, url=webhook_receiver.url(SECRET_PATH), sleep=_no_wait)

    assert len(webhook_receiver.received) == 1
    assert "HTTP 404" in str(raised.value)
    assert "s3cr3t-t0ken" not in str(raised.value)


def test_unreachable_webhook_gives_up_after_bounded_attempts(caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}{SECRET_PATH}"
    waits: list[float] = []

    with pytest.raises(AlertDeliveryError) as raised:
        post_alert({"kind": "run_failure"}, url=url, attempts=3, sleep=waits.append)

    assert len(waits) == 2
    assert "ConnectError" in str(raised.value)
    assert "s3cr3t-t0ken" not in str(raised.value)
    assert "s3cr3t-t0ken" not in caplog.text


def test_no_webhook_means_no_request(monkeypatch):
    monkeypatch.delenv(WEBHOOK_ENV_VAR, raising=False)

    assert post_alert({"kind": "run_failure"}) is False


def _no_wait(seconds: float) -> None:
    return None
