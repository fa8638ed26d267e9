"""An HTTP client that paces itself and retries what is worth retrying.

Every external API medkb reads publishes a request-rate limit (NCBI: 3 requests/s, 10 with a
key; MedlinePlus: 100 requests/minute) and some answer an excess with HTTP 429 and no
``Retry-After``. Retrying alone would keep tripping the limit, so requests first wait for a slot
in a :class:`RateLimiter` shared by every thread of the process that talks to the same service,
then retry transient failures with exponential backoff and full jitter, a bounded number of
times.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

logger = logging.getLogger(__name__)
# httpx logs every request URL at INFO; this module logs one line per request itself, with
# secret parameters masked, so httpx's own lines would only repeat them unmasked.
logging.getLogger("httpx").setLevel(logging.WARNING)

PACING_MARGIN = 1.05
RETRYABLE_STATUS_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


class SourceUnavailableError(RuntimeError):
    """A service kept failing after every retry, or answered with a non-retryable error."""


class RateLimiter:
    """Spaces calls at least ``1 / rate`` seconds apart, across threads.

    Args:
        rate: the most calls per second.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        # A hair slower than the limit: services count requests in sliding one-second windows,
        # and slots exactly 1/rate apart can put rate + 1 requests inside one such window.
        self.interval = 1.0 / rate * PACING_MARGIN
        self._lock = threading.Lock()
        self._next_slot = 0.0

    def acquire(self) -> None:
        """Blocks until the caller may send one request."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
        delay = slot - now
        if delay > 0:
            time.sleep(delay)


_limiters: dict[tuple[str, float], RateLimiter] = {}
_limiters_lock = threading.Lock()


def shared_rate_limiter(service: str, rate: float) -> RateLimiter:
    """Returns the process-wide limiter for ``service`` at ``rate`` requests per second."""
    with _limiters_lock:
        limiter = _limiters.get((service, rate))
        if limiter is None:
            limiter = _limiters[(service, rate)] = RateLimiter(rate)
        return limiter


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried.

    The wait before retry ``n`` (0-based) is uniform in ``[0, min(max_delay, base * 2**n)]``
    ("full jitter"), so parallel clients that failed together do not retry together.
    """

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass
class RequestStats:
    """What a client did, for the asset metadata an auditor reads."""

    requests: int = 0
    retries: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)

    def count_failure(self, kind: str) -> None:
        self.failures_by_kind[kind] = self.failures_by_kind.get(kind, 0) + 1


class PacedClient:
    """A thin wrapper over :class:`httpx.Client` adding pacing, retries and one log line a request.

    Args:
        service: a short name for logs and errors, e.g. ``"ncbi"``.
        base_url: the service's base URL; request paths are relative to it.
        rate_limiter: shared limiter for the service.
        retry: the retry policy.
        timeout: seconds for connect and read.
        redact: query parameter names whose values never reach a log line or an error.
        sleep: injectable for tests of the backoff arithmetic.
        refused: recognises a 2xx answer that is really a refusal to retry like a 429 (NCBI
            sometimes answers an excess request with 200 and an error body), within the same
            retry budget.
    """

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        rate_limiter: RateLimiter,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        redact: frozenset[str] = frozenset(),
        sleep: Callable[[float], None] = time.sleep,
        refused: Callable[[httpx.Response], bool] | None = None,
    ) -> None:
        self.service = service
        self.rate_limiter = rate_limiter
        self.retry = retry or RetryPolicy()
        self.redact = redact
        self.stats = RequestStats()
        self._sleep = sleep
        self._refused = refused or (lambda response: False)
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": "medkb/0.1", **(headers or {})},
            follow_redirects=True,
        )

    def __enter__(self) -> PacedClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """Sends one request, waiting for a rate slot and retrying transient failures.

        Returns:
            The successful (2xx) response.

        Raises:
            SourceUnavailableError: a non-retryable status, or retries exhausted.
        """
        shown = self._describe(path, params or data)
        last_problem = "no attempt made"
        for attempt in range(self.retry.max_retries + 1):
            if attempt:
                self.stats.retries += 1
                wait = self.retry.delay(attempt - 1)
                logger.warning(
                    "%s %s: %s; retry %d/%d in %.2fs",
                    self.service,
                    shown,
                    last_problem,
                    attempt,
                    self.retry.max_retries,
                    wait,
                )
                self._sleep(wait)

            self.rate_limiter.acquire()
            self.stats.requests += 1
            started = time.monotonic()
            try:
                # httpx always joins paths under a base URL ending in "/"; an empty path means
                # the base itself, which some services (MedlinePlus' /ws/query) require exactly.
                url = path or self.base_url
                response = self._client.request(method, url, params=params, data=data)
            except RETRYABLE_ERRORS as error:
                self.stats.count_failure(type(error).__name__)
                last_problem = f"{type(error).__name__}: {self._scrub(str(error))}"
                continue
            elapsed = time.monotonic() - started

            logger.info(
                "%s %s %s -> %d in %.2fs",
                self.service,
                method,
                shown,
                response.status_code,
                elapsed,
            )
            if response.is_success and not self._refused(response):
                return response
            refused = response.is_success
            self.stats.count_failure(
                f"refused (HTTP {response.status_code})" if refused else str(response.status_code)
            )
            last_problem = f"HTTP {response.status_code} {self._scrub(response.text[:200])}"
            if refused:
                continue
            if response.status_code not in RETRYABLE_STATUS_CODES:
                raise SourceUnavailableError(f"{self.service} {shown}: {last_problem}")

        raise SourceUnavailableError(
            f"{self.service} {shown}: gave up after {self.retry.max_retries} retries; "
            f"last problem: {last_problem}"
        )

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        return self.request("GET", path, params=params)

    def post(self, path: str, data: Mapping[str, Any] | None = None) -> httpx.Response:
        return self.request("POST", path, data=data)

    def _describe(self, path: str, params: Mapping[str, Any] | None) -> str:
        if not params:
            return path
        shown = ", ".join(
            f"{name}={'***' if name in self.redact else value}" for name, value in params.items()
        )
        return f"{path} ({shown})"

    def _scrub(self, text: str) -> str:
        """Removes secret parameter values that a server or httpx may echo into a message."""
        for name in self.redact:
            text = _redact_query_value(text, name)
        return text


def _redact_query_value(text: str, name: str) -> str:
    marker = f"{name}="
    start = text.find(marker)
    while start != -1:
        value_start = start + len(marker)
        value_end = value_start
        while value_end < len(text) and text[value_end] not in "&\"' )":
            value_end += 1
        text = text[:value_start] + "***" + text[value_end:]
        start = text.find(marker, value_start + 3)
    return text


def client_from_env(
    service: str,
    url_env_var: str,
    default_url: str,
    rate: float,
    retry: RetryPolicy | None = None,
    headers: Mapping[str, str] | None = None,
) -> PacedClient:
    """Builds a service's client at the URL its environment variable names, or the default.

    Args:
        service: the service's short name; it also keys the process-wide rate limiter.
        url_env_var: the environment variable that overrides the endpoint.
        default_url: the public endpoint.
        rate: the most requests per second the service allows.
        retry: the retry policy; the client's default when ``None``.
        headers: extra request headers.
    """
    return PacedClient(
        service,
        os.environ.get(url_env_var) or default_url,
        rate_limiter=shared_rate_limiter(service, rate),
        retry=retry,
        headers=headers,
    )
