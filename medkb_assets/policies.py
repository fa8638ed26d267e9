"""Retry and run-time policies shared by every asset and job."""

from __future__ import annotations

import dagster as dg

ASSET_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3,
    delay=10,
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)

JOB_MAX_RUNTIME_SECONDS = 3600
