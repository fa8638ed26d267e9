"""A client for NCBI E-utilities that finds one day's PubMed records and fetches them in pages.

A day is read in two steps, the way NCBI asks large readers to work: ``esearch`` with
``usehistory=y`` stores the day's result set on NCBI's history server and answers with its size, a
``WebEnv`` and a ``query_key``; ``efetch`` then pages through that stored set with
``retstart``/``retmax``. Every request goes through :class:`PacedClient`, so all threads of the
process share one rate limit (3 requests/s, 10 with an API key) and transient failures are retried
with backoff.

Usage::

    with EutilsClient.from_env() as client:
        search = client.search('"diabetes mellitus"[MeSH Terms]', date(2025, 1, 2))
        for payload in client.fetch(search, max_records=5000):
            ...

A day whose records to fetch exceed the 9,999 that one stored result set serves is refused
with :class:`ResultTooLargeError` rather than split: E-utilities dates have no finer unit than
a day, and NLM's update files (``pubmed.files``) carry such days whole.

Requests are plain GETs, the form E-utilities documents for searches and history fetches (POST
is only needed for long id lists, which this client never sends). The API key is a secret: it is
shown as ``***`` in every log line and error, httpx's own URL logging is silenced, and the key is
left out of every :class:`RawPayload` and search result.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from medkb_assets.sources.base import RawPayload
from medkb_assets.sources.http import (
    PacedClient,
    RateLimiter,
    RequestStats,
    RetryPolicy,
    shared_rate_limiter,
)

logger = logging.getLogger(__name__)

DEFAULT_EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
URL_ENV_VAR = "NCBI_EUTILS_URL"
API_KEY_ENV_VAR = "NCBI_API_KEY"
EMAIL_ENV_VAR = "NCBI_EMAIL"

SERVICE = "ncbi"
TOOL = "medkb"

# NCBI's published limits: 3 requests/s per IP without a key, 10 per key.
RATE_WITHOUT_KEY = 3.0
RATE_WITH_KEY = 10.0

MAX_BATCH_SIZE = 200

# efetch refuses a retstart above 9,998 for one stored result set, so at most 9,999 records of a
# search are reachable through the history server.
MAX_HISTORY_RECORDS = 9_999

API_KEY_PARAM = "api_key"

_RECORD_START = re.compile(rb"<Pubmed(?:Book)?Article[\s>]")
_XML_ERROR = re.compile(rb"<ERROR>(.*?)</ERROR>", re.DOTALL)
_ECHOED_KEY = re.compile(r'("api[-_]key"\s*:\s*")[^"]*')
# Wordings NCBI uses when the WebEnv behind a query_key is gone (sessions expire after idling,
# or the history server lost them); a fresh esearch makes a new one.
_EXPIRED_HISTORY_MARKERS = ("unable to obtain query", "cannot retrieve history", "webenv")


class EutilsError(RuntimeError):
    """E-utilities answered, but with an error instead of a result."""


class ResultTooLargeError(EutilsError):
    """A search matched more records than E-utilities serves from one result set."""


@dataclass(frozen=True)
class FetchPlan:
    """How many of a search's records will be fetched under the per-partition cap.

    Attributes:
        matched: records the search matched.
        max_records: the cap.
    """

    matched: int
    max_records: int

    @property
    def to_fetch(self) -> int:
        return min(self.matched, self.max_records)

    @property
    def cap_hit(self) -> bool:
        return self.matched > self.max_records

    def describe(self, fetched: int) -> str:
        """Says how many records were fetched, naming the cap when it cut the fetch short.

        Args:
            fetched: records actually received.

        Returns:
            ``"cap of 5000 reached: 5000 of 7200 records fetched"`` or
            ``"93 of 93 records fetched"``.
        """
        summary = f"{fetched} of {self.matched} records fetched"
        if self.cap_hit:
            return f"cap of {self.max_records} reached: {summary}"
        return summary


@dataclass(frozen=True)
class SearchResult:
    """One day's esearch for one query, stored on NCBI's history server.

    Attributes:
        term: the query as sent.
        day: the Entrez date searched.
        count: records matched.
        webenv: history-server session holding the result set (None when nothing matched).
        query_key: the result set's key within ``webenv``.
        ids: the first PMIDs of the result set (as many as ``retmax`` asked for).
        query_translation: the query as PubMed understood it.
        request_params_without_key: the parameters sent, minus the API key.
        raw: the response body, verbatim.
        warnings: what NCBI reported about the query (phrases or fields it did not find).
    """

    term: str
    day: dt.date
    count: int
    webenv: str | None
    query_key: str | None
    ids: tuple[str, ...]
    query_translation: str
    request_params_without_key: dict[str, str]
    raw: RawPayload
    warnings: tuple[str, ...] = ()

    @property
    def request_params(self) -> dict[str, str]:
        """The parameters sent, minus the API key (same as ``request_params_without_key``)."""
        return self.request_params_without_key

    def plan(self, max_records: int) -> FetchPlan:
        """Applies the per-partition cap to this search."""
        return FetchPlan(matched=self.count, max_records=max_records)


class _NcbiHttpClient(PacedClient):
    """A :class:`PacedClient` that also hides the key where NCBI echoes it back.

    NCBI's rate-limit answer repeats the caller's key (``"api-key":"..."``) in its JSON body, and
    the base client quotes response bodies in retry warnings and errors.
    """

    def __init__(self, *args: Any, secret: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._secret = secret

    def _scrub(self, text: str) -> str:
        text = _ECHOED_KEY.sub(r"\1***", super()._scrub(text))
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    def hide_secrets(self, text: str) -> str:
        """Returns ``text`` with every secret value replaced by ``***``."""
        return self._scrub(text)


class EutilsClient:
    """Searches PubMed for one Entrez day and fetches the matching records in pages.

    Args:
        base_url: the E-utilities base URL; None means NCBI's public service.
        api_key: NCBI API key; raises the rate limit from 3 to 10 requests/s.
        email: contact address NCBI asks every client to send with ``tool``.
        tool: the client name sent to NCBI.
        timeout: seconds for connect and read of each request.
        retry: how transient failures (429, 5xx, timeouts, dropped connections) are retried.
        rate: requests per second, for a key NCBI granted a higher limit; None means NCBI's
            published limit for the presence or absence of a key.
        sleep: injectable for tests of the backoff waits.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        email: str | None = None,
        tool: str = TOOL,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rate: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url or DEFAULT_EUTILS_URL
        self.email = email or None
        self.tool = tool
        self._api_key = api_key or None
        self.rate = rate or (RATE_WITH_KEY if self._api_key else RATE_WITHOUT_KEY)
        self.rate_limiter: RateLimiter = shared_rate_limiter(SERVICE, self.rate)
        self._sleep = sleep
        self._http = _NcbiHttpClient(
            SERVICE,
            self.base_url,
            rate_limiter=self.rate_limiter,
            retry=retry,
            timeout=timeout,
            redact=frozenset({API_KEY_PARAM}),
            sleep=sleep,
            secret=self._api_key,
            refused=lambda response: _is_rate_limit_answer(response.content),
        )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> EutilsClient:
        """Builds a client from ``NCBI_EUTILS_URL``, ``NCBI_API_KEY`` and ``NCBI_EMAIL``.

        Args:
            environ: the environment to read; None means :data:`os.environ`.
            **options: further constructor arguments (``timeout``, ``retry``, ...).
        """
        environ = os.environ if environ is None else environ
        return cls(
            base_url=environ.get(URL_ENV_VAR) or None,
            api_key=environ.get(API_KEY_ENV_VAR) or None,
            email=environ.get(EMAIL_ENV_VAR) or None,
            **options,
        )

    def __repr__(self) -> str:
        key = "***" if self._api_key else None
        return f"EutilsClient(base_url={self.base_url!r}, email={self.email!r}, api_key={key})"

    def __enter__(self) -> EutilsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def stats(self) -> RequestStats:
        """Requests sent and retried so far, with failures counted by kind."""
        return self._http.stats

    def search(self, term: str, day: dt.date, *, retmax: int = 0) -> SearchResult:
        """Runs esearch for the records that entered PubMed on ``day`` and match ``term``.

        Args:
            term: a PubMed query.
            day: the Entrez date (the day records entered PubMed).
            retmax: how many PMIDs to list in the answer; the records themselves come from
                :meth:`fetch`, so none are needed.

        Returns:
            The search, stored on NCBI's history server.

        Raises:
            EutilsError: NCBI reported an error for the query or answered something unreadable.
            SourceUnavailableError: NCBI kept failing after every retry.
        """
        entrez_day = day.strftime("%Y/%m/%d")
        params = {
            "db": "pubmed",
            "term": term,
            "retmode": "json",
            "usehistory": "y",
            "datetype": "edat",
            "mindate": entrez_day,
            "maxdate": entrez_day,
            "retmax": str(retmax),
        }
        response = self._send("esearch.fcgi", params)
        sent = self._without_key(params)

        answer = _esearch_result(response.content, sent, self._http.hide_secrets)
        warnings = _esearch_warnings(answer)
        count = _as_count(answer.get("count"), sent)
        if warnings and count:
            logger.warning("esearch %r on %s: %s", term, day, "; ".join(warnings))

        return SearchResult(
            term=term,
            day=day,
            count=count,
            webenv=answer.get("webenv") or None,
            query_key=answer.get("querykey") or None,
            ids=tuple(str(pmid) for pmid in answer.get("idlist") or ()),
            query_translation=str(answer.get("querytranslation") or ""),
            request_params_without_key=sent,
            raw=RawPayload(name="esearch.json", body=response.content, request=sent),
            warnings=warnings,
        )

    def fetch(
        self, search: SearchResult, max_records: int, batch_size: int = MAX_BATCH_SIZE
    ) -> Iterator[RawPayload]:
        """Fetches a search's records as PubMed XML, one payload per efetch batch.

        Stops after ``min(search.count, max_records)`` records. A batch that comes back with
        fewer records than asked for is kept as it is and the next batch starts where the short
        one was meant to end, so a fetch always ends. When the history session has expired, the
        search is run again once and fetching carries on from the same position.

        Args:
            search: the day's search.
            max_records: the cap on records fetched.
            batch_size: records per efetch request, at most 200.

        Yields:
            Each efetch response body, verbatim (``efetch-0001.xml``, ``efetch-0002.xml``, ...).

        Raises:
            ResultTooLargeError: more than 9,999 records would have to be fetched.
            EutilsError: NCBI reported an error, or the history session expired twice.
            SourceUnavailableError: NCBI kept failing after every retry.
        """
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}: {batch_size}")
        if max_records < 0:
            raise ValueError(f"max_records must not be negative: {max_records}")
        target = search.plan(max_records).to_fetch
        if target > MAX_HISTORY_RECORDS:
            raise ResultTooLargeError(_too_large_message(search, target))
        if target and not (search.webenv and search.query_key):
            yield from self._fetch_by_ids(search, target, batch_size)
            return

        searched_again = False
        retstart = 0
        batch_number = 0
        while retstart < target:
            retmax = min(batch_size, target - retstart)
            params = {
                "db": "pubmed",
                "WebEnv": str(search.webenv),
                "query_key": str(search.query_key),
                "retstart": str(retstart),
                "retmax": str(retmax),
                "retmode": "xml",
                "rettype": "abstract",
            }
            response = self._send("efetch.fcgi", params)
            sent = self._without_key(params)

            error = _efetch_error(response.content)
            if error is not None:
                if searched_again or not _is_expired_history(error):
                    raise EutilsError(
                        self._http.hide_secrets(f"ncbi efetch.fcgi ({sent}): {error}")
                    )
                search = self._search_again(search, error)
                target = min(search.plan(max_records).to_fetch, MAX_HISTORY_RECORDS)
                searched_again = True
                continue

            received = len(_RECORD_START.findall(response.content))
            if received < retmax:
                logger.warning(
                    "efetch retstart=%d asked for %d records and received %d",
                    retstart,
                    retmax,
                    received,
                )
            batch_number += 1
            yield RawPayload(
                name=f"efetch-{batch_number:04d}.xml", body=response.content, request=sent
            )
            retstart += retmax

    def _fetch_by_ids(
        self, search: SearchResult, target: int, batch_size: int
    ) -> Iterator[RawPayload]:
        """Fetches by PMID list when esearch kept no history session for the result set.

        Some E-utilities deployments and mirrors ignore ``usehistory``; the PMIDs are then listed
        by a second esearch and fetched ``batch_size`` at a time.
        """
        logger.warning(
            "esearch for %s returned no WebEnv; fetching %d records by PMID list",
            search.day,
            target,
        )
        listing = self.search(search.term, search.day, retmax=target)
        pmids = listing.ids[:target]
        for batch_number, start in enumerate(range(0, len(pmids), batch_size), start=1):
            params = {
                "db": "pubmed",
                "id": ",".join(pmids[start : start + batch_size]),
                "retmode": "xml",
                "rettype": "abstract",
            }
            response = self._send("efetch.fcgi", params)
            sent = self._without_key(params)
            error = _efetch_error(response.content)
            if error is not None:
                raise EutilsError(self._http.hide_secrets(f"ncbi efetch.fcgi ({sent}): {error}"))
            yield RawPayload(
                name=f"efetch-{batch_number:04d}.xml", body=response.content, request=sent
            )

    def _search_again(self, expired: SearchResult, error: str) -> SearchResult:
        self.stats.count_failure("expired history")
        logger.warning(
            "efetch for %s: history session expired (%s); running the search again",
            expired.day,
            error,
        )
        fresh = self.search(expired.term, expired.day)
        if fresh.count != expired.count:
            logger.warning(
                "search for %s matched %d records before and %d now",
                expired.day,
                expired.count,
                fresh.count,
            )
        if not (fresh.webenv and fresh.query_key):
            raise EutilsError(
                f"esearch for {expired.day} returned no WebEnv/query_key after the first expired"
            )
        return fresh

    def _send(self, path: str, params: dict[str, str]) -> httpx.Response:
        """Sends one request with the client's identity (and key) added to its parameters."""
        return self._http.get(path, params={**params, **self._identity()})

    def _identity(self) -> dict[str, str]:
        identity = {"tool": self.tool}
        if self.email:
            identity["email"] = self.email
        if self._api_key:
            identity[API_KEY_PARAM] = self._api_key
        return identity

    def _without_key(self, params: Mapping[str, str]) -> dict[str, str]:
        sent = {**params, **self._identity()}
        sent.pop(API_KEY_PARAM, None)
        return sent


def _esearch_result(
    body: bytes, sent: Mapping[str, str], hide_secrets: Callable[[str], str]
) -> dict[str, Any]:
    shown = hide_secrets(body[:200].decode("utf-8", "replace"))
    try:
        # NCBI's error texts can hold raw newlines, which strict JSON refuses.
        document = json.loads(body, strict=False)
    except ValueError as error:
        raise EutilsError(
            f"ncbi esearch.fcgi ({sent}) answered with something that is not JSON: {shown!r}"
        ) from error

    answer = document.get("esearchresult") if isinstance(document, dict) else None
    if not isinstance(answer, dict):
        raise EutilsError(
            f"ncbi esearch.fcgi ({sent}) answered without an esearchresult: {shown!r}"
        )
    if answer.get("ERROR"):
        message = " ".join(str(answer["ERROR"]).split())
        raise EutilsError(hide_secrets(f"ncbi esearch.fcgi ({sent}): {message}"))
    return answer


def _esearch_warnings(answer: Mapping[str, Any]) -> tuple[str, ...]:
    warnings = []
    for section in ("errorlist", "warninglist"):
        for kind, items in (answer.get(section) or {}).items():
            if isinstance(items, list) and items:
                warnings.append(f"{kind}: {', '.join(str(item) for item in items)}")
    return tuple(warnings)


def _as_count(value: Any, sent: Mapping[str, str]) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EutilsError(f"ncbi esearch.fcgi ({sent}) answered without a count") from None


def _is_rate_limit_answer(body: bytes) -> bool:
    if not body.lstrip().startswith(b"{"):
        return False
    try:
        document = json.loads(body, strict=False)
    except ValueError:
        return False
    error = document.get("error") if isinstance(document, dict) else None
    return isinstance(error, str) and "rate limit" in error.lower()


def _efetch_error(body: bytes) -> str | None:
    """Returns NCBI's error text when an efetch answer is an error document, not records."""
    head = body[:2048]
    if b"<eFetchResult" not in head and not head.lstrip().startswith(b"<ERROR>"):
        return None
    messages = [
        " ".join(message.decode("utf-8", "replace").split()) for message in _XML_ERROR.findall(body)
    ]
    return "; ".join(messages) or "an <eFetchResult> without records"


def _is_expired_history(error: str) -> bool:
    lowered = error.lower()
    if "retstart" in lowered and "larger than" in lowered:
        return False
    return any(marker in lowered for marker in _EXPIRED_HISTORY_MARKERS)


def _too_large_message(search: SearchResult, target: int) -> str:
    return (
        f"pubmed search {search.term!r} for {search.day} matched {search.count:,} records and "
        f"{target:,} would be fetched, but E-utilities serves at most {MAX_HISTORY_RECORDS:,} "
        "records of one result set (efetch refuses retstart above 9,998). Lower "
        "max_records_per_partition, narrow the topic's query, or read the day from NLM's "
        "update files (pubmed.files)."
    )
