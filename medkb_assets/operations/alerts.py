"""Alerts: a JSON POST to a webhook when a run fails or a blocking asset check fails.

The webhook URL comes from ``MEDKB_ALERT_WEBHOOK``, read when a sensor evaluates. Chat and
incident services put their credentials in the URL, so it is treated as a secret: it is never
stored in run config, metadata, cursors or files, and never logged, by medkb or by httpx (a
filter on httpx's loggers redacts it). Logs say only "webhook configured".

Each alert is one JSON object::

    {"kind": "run_failure" | "check_failure", "run_id", "job", "partition", "failing_step",
     "error_summary", "run_url", "check"}

where ``run_url`` is ``<MEDKB_UI_URL or http://127.0.0.1:3000>/runs/<run_id>`` and ``check``
(``asset:check_name``) is null for run failures. A failed blocking check normally fails its run
as well, so it raises two alerts: the run's, and one naming the check.

Delivery is retried a bounded number of times within one sensor evaluation; if it still fails,
the evaluation fails (visible on the sensor's ticks) and the check sensor retries on its next
tick, since its cursor only moves once every alert of a tick was accepted.
"""

# Dagster inspects the annotations of ops, checks and sensors when they are defined, so they
# must stay real objects rather than postponed strings.
import datetime as dt
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
import httpx

logger = logging.getLogger(__name__)

WEBHOOK_ENV_VAR = "MEDKB_ALERT_WEBHOOK"
UI_URL_ENV_VAR = "MEDKB_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:3000"
PARTITION_TAG = "dagster/partition"

RUN_FAILURE_SENSOR = "run_failure_alert"
CHECK_FAILURE_SENSOR = "failed_check_alert"
CHECK_SENSOR_INTERVAL_S = 60
# When the check sensor first starts it looks back this far, so a failure just before it was
# switched on is still reported but an old history is not replayed.
FIRST_LOOKBACK = dt.timedelta(minutes=15)
RUNS_PER_TICK = 100
FINISHED_STATUSES = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]

# Sensor evaluations are cut off after about a minute, so delivery is bounded well below it:
# at most ATTEMPTS requests of REQUEST_TIMEOUT_S each, with jittered waits of at most
# MAX_DELAY_S between them.
ATTEMPTS = 3
REQUEST_TIMEOUT_S = 5.0
BASE_DELAY_S = 1.0
MAX_DELAY_S = 4.0
RETRYABLE_STATUS_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
ERROR_SUMMARY_CHARS = 500


class AlertDeliveryError(RuntimeError):
    """The webhook did not accept an alert after every attempt."""


class _RedactSecrets(logging.Filter):
    """Replaces secret strings in log records before any handler formats them."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "<webhook>")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_redactor = _RedactSecrets()
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_redactor)


def webhook_url() -> str | None:
    """Returns the webhook URL from ``MEDKB_ALERT_WEBHOOK``, or None when alerts are off."""
    return os.environ.get(WEBHOOK_ENV_VAR) or None


def run_url(run_id: str) -> str:
    """Returns the web UI page of a run (``MEDKB_UI_URL`` or the local default)."""
    base = (os.environ.get(UI_URL_ENV_VAR) or DEFAULT_UI_URL).rstrip("/")
    return f"{base}/runs/{run_id}"


def post_alert(
    payload: dict[str, Any],
    *,
    url: str | None = None,
    attempts: int = ATTEMPTS,
    timeout: float = REQUEST_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POSTs one alert as JSON, retrying timeouts, dropped connections, 429 and 5xx.

    Args:
        payload: the alert object.
        url: the webhook; defaults to ``MEDKB_ALERT_WEBHOOK``.
        attempts: requests at most, the first included.
        timeout: seconds per request.
        sleep: injectable for tests of the backoff.

    Returns:
        True once the webhook answered 2xx; False when no webhook is configured.

    Raises:
        AlertDeliveryError: every attempt failed, or the webhook refused the alert (4xx). The
            message names the failure, never the URL.
    """
    url = url or webhook_url()
    if url is None:
        return False
    _redactor.secrets.update({url, str(httpx.URL(url))})
    logger.info("webhook configured; posting a %s alert", payload.get("kind", "medkb"))

    problem = "no attempt made"
    with httpx.Client(timeout=httpx.Timeout(timeout)) as client:
        for attempt in range(attempts):
            if attempt:
                wait = random.uniform(0, min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (attempt - 1)))
                logger.warning(
                    "alert webhook: %s; retry %d/%d in %.2fs", problem, attempt, attempts - 1, wait
                )
                sleep(wait)
            started = time.monotonic()
            try:
                response = client.post(url, json=payload)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as error:
                problem = type(error).__name__
                continue
            logger.info(
                "alert webhook POST %s -> %d in %.2fs",
                payload.get("kind", "alert"),
                response.status_code,
                time.monotonic() - started,
            )
            if response.is_success:
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code not in RETRYABLE_STATUS_CODES:
                break
    raise AlertDeliveryError(f"alert webhook did not accept the alert: {problem}")


def run_failure_payload(context: dg.RunFailureSensorContext) -> dict[str, Any]:
    """Describes a failed run: its job, partition, first failed step and error."""
    run = context.dagster_run
    failing_step = None
    error_summary = context.failure_event.message or "run failed"
    for event in context.get_step_failure_events():
        failing_step = event.step_key
        error = event.step_failure_data.error
        # Dagster wraps what user code raised; the innermost cause is the one worth reading.
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            message = error.message.strip()
            if error.cls_name and not message.startswith(error.cls_name):
                message = f"{error.cls_name}: {message}"
            error_summary = message
        break
    return {
        "kind": "run_failure",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get(PARTITION_TAG),
        "failing_step": failing_step,
        "error_summary": _summarise(error_summary),
        "run_url": run_url(run.run_id),
        "check": None,
    }


def check_failure_payload(run: dg.DagsterRun, entry: dg.EventLogEntry) -> dict[str, Any] | None:
    """Describes a failed blocking check from its evaluation event; None for any other event."""
    event = entry.dagster_event
    if event is None:
        return None
    evaluation = event.event_specific_data
    if not isinstance(evaluation, dg.AssetCheckEvaluation):
        return None
    # Only a failed blocking check of ERROR severity stops downstream assets.
    if evaluation.passed or not evaluation.blocking:
        return None
    if evaluation.severity != dg.AssetCheckSeverity.ERROR:
        return None

    check = dg.AssetCheckKey(evaluation.asset_key, evaluation.check_name)
    summary = evaluation.description or _metadata_summary(evaluation.metadata)
    return {
        "kind": "check_failure",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": evaluation.partition or run.tags.get(PARTITION_TAG),
        "failing_step": event.step_key,
        "error_summary": _summarise(summary or f"check {check.to_user_string()} failed"),
        "run_url": run_url(run.run_id),
        "check": check.to_user_string(),
    }


def _metadata_summary(metadata: Mapping[str, Any]) -> str:
    parts = []
    for name, value in metadata.items():
        shown = getattr(value, "value", value)
        if isinstance(shown, str | int | float | bool):
            parts.append(f"{name}={shown}")
    return ", ".join(parts)


def _summarise(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= ERROR_SUMMARY_CHARS:
        return text
    return text[: ERROR_SUMMARY_CHARS - 1] + "…"


@dg.run_failure_sensor(
    name=RUN_FAILURE_SENSOR,
    description=f"POSTs a JSON alert for every failed run to the webhook in {WEBHOOK_ENV_VAR}.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_alert(context: dg.RunFailureSensorContext) -> dg.SkipReason | None:
    """Alerts on every failed run of the code location's jobs."""
    url = webhook_url()
    if url is None:
        return dg.SkipReason(f"{WEBHOOK_ENV_VAR} is not set; no alert sent")
    context.log.info("webhook configured; alerting on failed run %s", context.dagster_run.run_id)
    post_alert(run_failure_payload(context), url=url)
    return None


@dg.sensor(
    name=CHECK_FAILURE_SENSOR,
    description=(
        f"POSTs a JSON alert for every failed blocking asset check to the webhook in "
        f"{WEBHOOK_ENV_VAR}."
    ),
    minimum_interval_seconds=CHECK_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def failed_check_alert(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Alerts on failed blocking asset checks of the runs finished since the previous tick."""
    cursor = _RunCursor.parse(context.cursor)
    records = _finished_runs_since(context.instance, cursor)
    if not records:
        return dg.SkipReason("no run finished since the last tick")

    alerts: list[dict[str, Any]] = []
    for record in records:
        run = record.dagster_run
        entries = context.instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
        alerts.extend(
            payload for entry in entries if (payload := check_failure_payload(run, entry))
        )
    next_cursor = cursor.after_runs(records).serialize()

    url = webhook_url()
    if alerts and url is None:
        context.update_cursor(next_cursor)
        return dg.SkipReason(f"{WEBHOOK_ENV_VAR} is not set; {len(alerts)} alerts not sent")
    if alerts:
        context.log.info("webhook configured; sending %d check alerts", len(alerts))
    for payload in alerts:
        # A delivery failure raises before the cursor moves, so the next tick retries it.
        post_alert(payload, url=url)
    context.update_cursor(next_cursor)
    return dg.SkipReason(f"sent {len(alerts)} check alerts for {len(records)} finished runs")


@dataclass(frozen=True)
class _RunCursor:
    """The newest run update seen, and the runs updated at exactly that moment."""

    updated_after: dt.datetime
    seen_run_ids: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, cursor: str | None) -> "_RunCursor":
        if not cursor:
            return cls(dt.datetime.now(dt.UTC) - FIRST_LOOKBACK)
        state = json.loads(cursor)
        return cls(dt.datetime.fromisoformat(state["updated_after"]), frozenset(state["seen"]))

    def serialize(self) -> str:
        return json.dumps(
            {"updated_after": self.updated_after.isoformat(), "seen": sorted(self.seen_run_ids)}
        )

    def after_runs(self, records: list[dg.RunRecord]) -> "_RunCursor":
        newest = max(_utc(record.update_timestamp) for record in records)
        if newest < self.updated_after:
            return self
        seen = {
            record.dagster_run.run_id
            for record in records
            if _utc(record.update_timestamp) == newest
        }
        if newest == self.updated_after:
            seen |= self.seen_run_ids
        return _RunCursor(newest, frozenset(seen))


def _finished_runs_since(instance: dg.DagsterInstance, cursor: _RunCursor) -> list[dg.RunRecord]:
    # The default SQLite event log is sharded per run and cannot list check evaluations across
    # runs, so the sensor walks finished runs instead and reads each run's own events.
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=FINISHED_STATUSES,
            updated_after=cursor.updated_after - dt.timedelta(microseconds=1),
        ),
        limit=RUNS_PER_TICK,
        order_by="update_timestamp",
        ascending=True,
    )
    return [record for record in records if record.dagster_run.run_id not in cursor.seen_run_ids]


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def build_alert_sensors() -> list[dg.SensorDefinition]:
    """Returns the run-failure and failed-check alert sensors."""
    return [run_failure_alert, failed_check_alert]
