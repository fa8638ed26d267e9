"""Running medkb: freshness, alerts, retention, and the ``doctor``/``audit``/``stats`` commands.

:func:`build_operations_definitions` gathers the Dagster definitions this package contributes
to the code location; the command-line side lives in :mod:`medkb_assets.operations.commands`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from medkb_assets.config import MedkbConfig


@dataclass
class OperationsDefinitions:
    """The checks, jobs, schedules and sensors that keep an installation observable and tidy."""

    asset_checks: list[dg.AssetChecksDefinition] = field(default_factory=list)
    jobs: list[dg.JobDefinition] = field(default_factory=list)
    schedules: list[dg.ScheduleDefinition] = field(default_factory=list)
    sensors: list[dg.SensorDefinition] = field(default_factory=list)


def build_operations_definitions(config: MedkbConfig) -> OperationsDefinitions:
    """Builds freshness checks and their sensor, the alert sensors and the retention job.

    Args:
        config: the configuration in use; its topics name the per-topic freshness checks and its
            ``retention_days`` sets what the retention job removes.
    """
    from medkb_assets.operations.alerts import build_alert_sensors
    from medkb_assets.operations.health import build_freshness_checks, build_freshness_sensor
    from medkb_assets.operations.retention import build_retention_job, build_retention_schedule

    freshness_checks = build_freshness_checks(config)
    retention_job = build_retention_job(config)
    return OperationsDefinitions(
        asset_checks=freshness_checks,
        jobs=[retention_job],
        schedules=[build_retention_schedule(retention_job)],
        sensors=[build_freshness_sensor(freshness_checks), *build_alert_sensors()],
    )
