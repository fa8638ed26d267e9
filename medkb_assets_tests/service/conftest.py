"""A real ``dagster dev`` (webserver and daemon) over the offline demo configuration.

The service starts once per test session the way ``make run`` starts it: the repository's
``workspace.yaml`` and ``dagster.yaml``, with a temporary ``DAGSTER_HOME`` and data directory and
the committed sample of real PubMed records as the only source. The expensive part, a backfill of
a few sample partitions of the daily job and the index build the automation sensor launches after
it, also happens once and is shared by the GraphQL and browser tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "data" / "samples" / "demo_config.yaml"
SCREENSHOT_DIR = REPO_ROOT / "artifacts" / "screenshots"
LOCATION_NAME = "medkb"
REPOSITORY_NAME = "__repository__"
BACKFILL_PARTITION_COUNT = 3

STARTUP_TIMEOUT_S = 120
BACKFILL_TIMEOUT_S = 300
# The automation sensor evaluates at most once a minute, and the run it launches loads the model.
INDEX_RUN_TIMEOUT_S = 240
SHUTDOWN_TIMEOUT_S = 60
POLL_INTERVAL_S = 2.0

FAILED_RUN_STATUSES = {"FAILURE", "CANCELED", "CANCELING"}
# Port 9 (discard) is closed on loopback: a source that tried to fetch anything would fail at
# once instead of reaching the internet, which the demo configuration promises it never does.
CLOSED_ENDPOINT = "http://127.0.0.1:9"

T = TypeVar("T")

# Loads the code location the way the code server does, with the service's environment, and
# prints what the tests should find in the UI. A subprocess keeps this session's own
# ``medkb_assets.definitions.defs`` (built from whatever MEDKB_CONFIG the session has) untouched.
_DISCOVERY_SCRIPT = """
import json

from medkb_assets.definitions import defs
from medkb_assets.demo import sample_partitions

graph = defs.resolve_asset_graph()
checks = {}
for check_key in graph.asset_check_keys:
    checks.setdefault(check_key.asset_key.to_user_string(), []).append(check_key.name)
daily_job = defs.resolve_job_def("daily_update")
print(json.dumps({
    "asset_keys": sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
    "asset_checks": {key: sorted(names) for key, names in checks.items()},
    "jobs": sorted(job.name for job in defs.jobs or []),
    "schedules": {s.name: s.default_status.value for s in defs.schedules or []},
    "sensors": {s.name: s.default_status.value for s in defs.sensors or []},
    "daily_job_assets": sorted(
        key.to_user_string() for key in daily_job.asset_layer.executable_asset_keys
    ),
    "sample_partitions": sample_partitions(),
}))
"""

LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill { status numPartitions error { message } }
    ... on PythonError { message }
  }
}
"""

RUNS_TAGGED = """
query RunsTagged($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
    __typename
    ... on Runs {
      results { runId jobName status creationTime endTime tags { key value } }
    }
    ... on PythonError { message }
  }
}
"""

RUN_EVENTS = """
query RunEvents($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message stepKey }
        ... on ExecutionStepFailureEvent { error { message cause { message } } }
        ... on AssetCheckEvaluationPlannedEvent { assetKey { path } checkName }
        ... on AssetCheckEvaluationEvent {
          evaluation { assetKey { path } checkName success }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

ASSET_MATERIALIZATIONS = """
query AssetMaterializations($path: [String!]!, $partitions: [String!], $limit: Int) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: $limit) {
        partition
        runId
        timestamp
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intValue }
        }
      }
    }
  }
}
"""

WORKSPACE_STATUS = """
query WorkspaceStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message cause { message } }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


@dataclass(frozen=True)
class ExpectedDefinitions:
    """What ``medkb_assets.definitions.defs`` defines under the demo configuration."""

    asset_keys: list[str]
    asset_checks: dict[str, list[str]]
    jobs: list[str]
    schedules: dict[str, str]
    sensors: dict[str, str]
    daily_job_assets: list[str]
    sample_partitions: list[str]


@dataclass
class DagsterService:
    """A running ``dagster dev`` and the directories it works in."""

    url: str
    home: Path
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        """Sends one GraphQL request to the webserver and returns its ``data``.

        Raises:
            AssertionError: the request failed or returned GraphQL errors; the message carries
                the response and the tail of the service log.
        """
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if response.status_code != 200 or body.get("errors") or "data" not in body:
            raise AssertionError(
                f"GraphQL request failed with HTTP {response.status_code}: "
                f"{response.text[:3000]}\n{self.log_tail()}"
            )
        return body["data"]

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the webserver and daemon log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no service log at {self.log_path}: {error})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
        """Polls ``probe`` until it returns something other than ``None``.

        Raises:
            AssertionError: the timeout passed or the service exited; the message names what
                was awaited and carries the tail of the service log.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dagster dev exited with code {self.process.returncode} while waiting for "
                    f"{what}\n{self.log_tail()}"
                )
            outcome = probe()
            if outcome is not None:
                return outcome
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s:.0f}s waiting for {what}\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def runs_tagged(self, key: str, value: str) -> list[dict[str, Any]]:
        """Every run carrying the tag ``key=value``, newest first."""
        runs = self.graphql(RUNS_TAGGED, key=key, value=value)["runsOrError"]
        assert runs["__typename"] == "Runs", runs
        return runs["results"]

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        """The event log of one run."""
        logs = self.graphql(RUN_EVENTS, runId=run_id)["logsForRun"]
        assert logs["__typename"] == "EventConnection", logs
        return logs["events"]

    def run_failure_report(self, run: dict[str, Any]) -> str:
        """Describes why a run failed: its failed steps' errors and the service log tail."""
        lines = [f"run {run['runId']} of {run['jobName']} ended {run['status']}"]
        for event in self.run_events(run["runId"]):
            if event["__typename"] == "ExecutionStepFailureEvent":
                error = event["error"] or {}
                cause = (error.get("cause") or {}).get("message", "")
                lines.append(f"  step {event['stepKey']}: {error.get('message', '')}{cause}")
            elif event["__typename"] == "RunFailureEvent":
                lines.append(f"  run: {event['message']}")
        lines.append(self.log_tail())
        return "\n".join(lines)

    def materializations(
        self, asset_key: str, partitions: list[str] | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Materialization events of one asset, newest first, optionally of some partitions."""
        asset = self.graphql(
            ASSET_MATERIALIZATIONS, path=[asset_key], partitions=partitions, limit=limit
        )["assetOrError"]
        assert asset["__typename"] == "Asset", f"{asset_key} was never materialized: {asset}"
        return asset["assetMaterializations"]


@dataclass(frozen=True)
class SampleMaterialization:
    """What the session's backfill and the index build that followed it produced."""

    partitions: list[str]
    backfill_id: str
    backfill_runs: list[dict[str, Any]]
    index_run: dict[str, Any]
    index_version: str


def service_environment(home: Path, data_dir: Path) -> dict[str, str]:
    """The environment ``dagster dev`` runs with: temporary instance and data, offline sources."""
    environment = dict(os.environ)
    environment.update(
        DAGSTER_HOME=str(home),
        MEDKB_DATA_DIR=str(data_dir),
        MEDKB_CONFIG=str(DEMO_CONFIG),
        NCBI_EUTILS_URL=CLOSED_ENDPOINT,
        WHO_API_URL=CLOSED_ENDPOINT,
        CDC_API_URL=CLOSED_ENDPOINT,
        MEDLINEPLUS_URL=CLOSED_ENDPOINT,
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    environment.pop("NCBI_API_KEY", None)
    environment.pop("MEDKB_ALERT_WEBHOOK", None)
    return environment


def save_screenshot(png: bytes, name: str, tmp_dir: Path) -> Path:
    """Writes a screenshot to the test's temporary folder and to ``artifacts/screenshots``.

    Returns:
        The copy under ``artifacts/screenshots`` that a person can open after the run.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    (tmp_dir / name).write_bytes(png)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    kept = SCREENSHOT_DIR / name
    kept.write_bytes(png)
    return kept


@pytest.fixture(scope="session")
def service_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh ``DAGSTER_HOME`` holding the repository's ``dagster.yaml``, and a data directory."""
    root = tmp_path_factory.mktemp("service")
    home = root / "dagster"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home, root / "data"


@pytest.fixture(scope="session")
def expected_definitions(service_dirs: tuple[Path, Path]) -> ExpectedDefinitions:
    """The names the UI must show, read from ``defs`` loaded with the service's environment."""
    home, data_dir = service_dirs
    completed = subprocess.run(
        [sys.executable, "-c", _DISCOVERY_SCRIPT],
        cwd=REPO_ROOT,
        env=service_environment(home, data_dir),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, f"loading the definitions failed:\n{completed.stderr}"
    return ExpectedDefinitions(**json.loads(completed.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def dagster_service(
    service_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterService]:
    """``dagster dev -w workspace.yaml`` on a free loopback port, stopped as Ctrl-C stops it."""
    home, data_dir = service_dirs
    port = _free_port()
    log_path = tmp_path_factory.mktemp("service_log") / "dagster_dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=service_environment(home, data_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so that whatever it leaves behind can be found and stopped.
            start_new_session=True,
            # dagster dev maps SIGTERM onto its SIGINT handler; a shell that started this session
            # in the background leaves SIGINT ignored, and both signals would then do nothing.
            preexec_fn=_restore_default_sigint,
        )
    service = DagsterService(
        url=f"http://127.0.0.1:{port}",
        home=home,
        data_dir=data_dir,
        log_path=log_path,
        process=process,
    )
    try:
        _wait_until_loaded(service)
        yield service
    finally:
        left_behind = _stop(process, home)
        if left_behind:
            raise AssertionError(
                f"dagster dev left processes running {SHUTDOWN_TIMEOUT_S}s after SIGINT; they "
                "were killed:\n" + "\n".join(left_behind) + "\n" + service.log_tail()
            )


@pytest.fixture(scope="session")
def materialized_sample(
    dagster_service: DagsterService, expected_definitions: ExpectedDefinitions
) -> SampleMaterialization:
    """Backfills the first sample partitions of the daily job and waits for the index to follow.

    The index is not launched by the test: the ``index_automation`` sensor must request it once
    the backfilled embeddings have settled.
    """
    partitions = expected_definitions.sample_partitions[:BACKFILL_PARTITION_COUNT]
    assert len(partitions) == BACKFILL_PARTITION_COUNT, expected_definitions.sample_partitions

    backfill_id = _launch_backfill(dagster_service, partitions)
    backfill_runs = _wait_for_backfill_runs(dagster_service, backfill_id, len(partitions))
    embedded_at = max(
        int(event["timestamp"]) / 1000
        for event in dagster_service.materializations("embeddings", partitions)
    )
    index_run = _wait_for_index_run(dagster_service, embedded_at)

    current = dagster_service.data_dir / "index" / "CURRENT"
    assert current.is_file(), f"no {current} after a successful index run"
    return SampleMaterialization(
        partitions=partitions,
        backfill_id=backfill_id,
        backfill_runs=backfill_runs,
        index_run=index_run,
        index_version=current.read_text().strip(),
    )


def _launch_backfill(service: DagsterService, partitions: list[str]) -> str:
    params = {
        "selector": {
            "partitionSetName": "daily_update_partition_set",
            "repositorySelector": {
                "repositoryName": REPOSITORY_NAME,
                "repositoryLocationName": LOCATION_NAME,
            },
        },
        "partitionNames": partitions,
        "title": "service test backfill",
        # A step per process costs a Python start-up and a Dagster import each; on a small
        # machine that triples the backfill. The index run the sensor launches keeps the
        # default multiprocess executor, as every run launched from the UI does.
        "runConfigData": {"execution": {"config": {"in_process": {}}}},
    }
    launched = service.graphql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _wait_for_backfill_runs(
    service: DagsterService, backfill_id: str, expected_runs: int
) -> list[dict[str, Any]]:
    def all_succeeded() -> list[dict[str, Any]] | None:
        runs = service.runs_tagged("dagster/backfill", backfill_id)
        for run in runs:
            if run["status"] in FAILED_RUN_STATUSES:
                raise AssertionError(service.run_failure_report(run))
        backfill = service.graphql(BACKFILL_STATUS, backfillId=backfill_id)
        backfill = backfill["partitionBackfillOrError"]
        if backfill.get("status") in {"FAILED", "COMPLETED_FAILED", "CANCELED"}:
            raise AssertionError(f"backfill {backfill_id} ended {backfill}\n{service.log_tail()}")
        done = len(runs) == expected_runs and all(run["status"] == "SUCCESS" for run in runs)
        return runs if done else None

    return service.wait_for(
        f"the {expected_runs} runs of backfill {backfill_id} to succeed",
        all_succeeded,
        BACKFILL_TIMEOUT_S,
    )


def _wait_for_index_run(service: DagsterService, embedded_at: float) -> dict[str, Any]:
    def index_run_succeeded() -> dict[str, Any] | None:
        runs = service.runs_tagged("dagster/sensor_name", "index_automation")
        for run in runs:
            if run["status"] in FAILED_RUN_STATUSES:
                raise AssertionError(service.run_failure_report(run))
        for run in runs:
            if run["creationTime"] >= embedded_at and run["status"] == "SUCCESS":
                return run
        return None

    return service.wait_for(
        "the index_automation sensor to launch a successful faiss_index run after the backfill",
        index_run_succeeded,
        INDEX_RUN_TIMEOUT_S,
    )


def _wait_until_loaded(service: DagsterService) -> None:
    def server_answers() -> bool | None:
        try:
            response = httpx.get(f"{service.url}/server_info", timeout=5)
        except httpx.TransportError:
            return None
        return True if response.status_code == 200 else None

    def location_loaded() -> bool | None:
        workspace = service.graphql(WORKSPACE_STATUS)["workspaceOrError"]
        assert workspace["__typename"] == "Workspace", workspace
        entries = {entry["name"]: entry for entry in workspace["locationEntries"]}
        entry = entries.get(LOCATION_NAME)
        if entry is None or entry["loadStatus"] != "LOADED":
            return None
        location = entry["locationOrLoadError"]
        if location["__typename"] == "PythonError":
            cause = (location.get("cause") or {}).get("message", "")
            raise AssertionError(
                f"code location {LOCATION_NAME} failed to load: {location['message']}{cause}"
            )
        return True

    service.wait_for("the webserver to answer /server_info", server_answers, STARTUP_TIMEOUT_S)
    service.wait_for(f"code location {LOCATION_NAME} to load", location_loaded, STARTUP_TIMEOUT_S)


def _stop(process: subprocess.Popen[bytes], home: Path) -> list[str]:
    """Interrupts ``dagster dev`` and kills what outlives it; returns what had to be killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass

    # Run workers and code servers are grandchildren: they are found by the process group the
    # service started in and by the temporary DAGSTER_HOME only this service's processes carry.
    deadline = time.monotonic() + 10
    survivors = _service_processes(process.pid, home)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.5)
        survivors = _service_processes(process.pid, home)

    killed = []
    for pid, command in survivors.items():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(f"  pid {pid}: {command}")
    if process.poll() is None:
        process.kill()
    process.wait()
    return killed


def _service_processes(group: int, home: Path) -> dict[int, str]:
    marker = f"DAGSTER_HOME={home}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        try:
            # A zombie has already exited; only its parent's wait is missing.
            exited = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
            in_group = os.getpgid(pid) == group
            carries_home = marker in (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if (in_group or carries_home) and not exited and pid != os.getpid():
            found[pid] = command[:200]
    return found


def _restore_default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
