"""WHO Disease Outbreak News (DON) items published on one day that concern one topic.

The DON feed is an OData collection answering ``{"@odata.context": ..., "value": [...]}``. WHO
publishes no schema for it; the fields read here (``Id``, ``Title``, ``OverrideTitle``,
``UrlName``, ``DonId``, ``ItemDefaultUrl``, ``PublicationDate``, ``LastModified`` and the HTML
sections ``Summary``, ``Overview``, ``Epidemiology``, ``Response``, ``Assessment``, ``Advice``)
are those public clients rely on. Each is treated as optional: an item lacking what a document
needs is skipped and counted, never the page.

Day: an item belongs to the UTC day of its ``PublicationDate``. Requests ask the service to
filter on that day and to order by ``PublicationDate desc``, and pages are read until one comes
back short or holds an item older than the day. Both are checked here too, because public
clients report that the service at times ignores ``$orderby``. Items WHO migrated between
content systems carry the migration time in ``PublicationDate`` and the original date in
``PublicationDateAndTime``; they are attributed to the former, like every other item, so the
filter the service applies and the one applied here agree.

Topic: DON items carry no subject tags, so an item belongs to a topic when its title, summary
or overview mentions one of the topic's keywords as a whole word, ignoring case.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from medkb_assets.sources.base import FetchResult, RawPayload, SourceDocument
from medkb_assets.sources.html_text import html_to_text, keyword_pattern, normalize_space
from medkb_assets.sources.http import PacedClient, RetryPolicy, client_from_env

logger = logging.getLogger(__name__)

SOURCE = "who"
WHO_API_URL_ENV = "WHO_API_URL"
DEFAULT_WHO_API_URL = "https://www.who.int/api/news/diseaseoutbreaknews"
ITEM_URL_BASE = "https://www.who.int/emergencies/disease-outbreak-news/item/"
SITE_ROOT = "https://www.who.int"
# WHO publishes no request limit for this feed; one request a second is polite and a day's
# items fit in one or two pages.
WHO_REQUESTS_PER_SECOND = 1.0
# Public clients observe the service capping $top at 100.
DEFAULT_PAGE_SIZE = 100
# Section fields in the order a DON page shows them, with the label each gets in the text.
SECTIONS = (
    ("Summary", "Summary"),
    ("Overview", "Overview"),
    ("Epidemiology", "Epidemiology"),
    ("Response", "Public health response"),
    ("Assessment", "WHO risk assessment"),
    ("Advice", "WHO advice"),
)
# The fields a topic keyword is looked for in.
MATCHED_FIELDS = ("Summary", "Overview")


class _MalformedItem(ValueError):
    """One item lacks a field a document needs, or has it with an unexpected type."""


@dataclass
class WhoPage:
    """What one DON response page held.

    Attributes:
        documents: items on the requested day and topic (every valid item when neither is given).
        skipped: malformed items.
        skip_reasons: one line per skipped item.
        items: how many items the page held, valid or not.
        older_than_day: whether an item published before the requested day was on the page.
    """

    documents: list[SourceDocument] = field(default_factory=list)
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    items: int = 0
    older_than_day: bool = False


def who_client(retry: RetryPolicy | None = None) -> PacedClient:
    """Builds the client for the DON feed at ``WHO_API_URL`` (default: WHO's public API).

    Args:
        retry: the retry policy; the client's default when ``None``.

    Returns:
        A client whose base URL is the DON collection itself.
    """
    return client_from_env(
        SOURCE,
        WHO_API_URL_ENV,
        DEFAULT_WHO_API_URL,
        WHO_REQUESTS_PER_SECOND,
        retry,
        headers={"Accept": "application/json"},
    )


def fetch_who(
    client: PacedClient,
    day: date,
    keywords: Sequence[str],
    max_records: int,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> FetchResult:
    """Fetches the DON items published on ``day`` that mention any of ``keywords``.

    Args:
        client: a client whose base URL is the DON collection (see :func:`who_client`).
        day: the partition's day (UTC).
        keywords: the topic's keywords.
        max_records: the most documents to return; more matches set ``cap_hit``.
        page_size: items per request (``$top``).

    Returns:
        The documents, every response body as ``page-NNNN.json``, and the counts.

    Raises:
        SourceUnavailableError: the service kept failing.
        ValueError: a response was not the JSON collection expected.
    """
    result = FetchResult()
    if keyword_pattern(keywords) is None:
        logger.warning("who %s: no keywords to match, nothing fetched", day)
        return result
    requests_before, retries_before = client.stats.requests, client.stats.retries
    seen_ids: set[str] = set()
    previous_body = b""
    skip = 0
    page_number = 0

    while True:
        params = _page_params(day, page_size, skip)
        response = client.get("", params=params)
        if response.content == previous_body:
            logger.warning("who %s: $skip=%d repeated the previous page; stopping", day, skip)
            break
        previous_body = response.content
        page_number += 1
        result.payloads.append(
            RawPayload(
                f"page-{page_number:04d}.json",
                response.content,
                {name: str(value) for name, value in params.items()},
            )
        )
        page = parse_who_page(response.content, day=day, keywords=keywords)
        result.skipped += page.skipped
        result.skip_reasons.extend(page.skip_reasons)
        new_documents = [doc for doc in page.documents if doc.source_id not in seen_ids]
        _add_capped(result, new_documents, max_records)
        seen_ids.update(doc.source_id for doc in new_documents)

        # Paging goes on past the cap: a day's items fit in a page or two, and the count of
        # matches left out is what makes a hit cap visible.
        if page.items < page_size or page.older_than_day:
            break
        skip += page.items

    result.requests = client.stats.requests - requests_before
    result.retries = client.stats.retries - retries_before
    logger.info(
        "who %s: %d documents (%d matched, %d skipped) from %d pages",
        day,
        len(result.documents),
        result.matched,
        result.skipped,
        page_number,
    )
    return result


def parse_who_page(body: bytes, day: date | None = None, keywords: Sequence[str] = ()) -> WhoPage:
    """Parses one DON response body into documents.

    Args:
        body: the response body.
        day: keep only items published on this UTC day; all days when ``None``.
        keywords: keep only items whose title, summary or overview mentions one; all items when
            empty.

    Returns:
        The page's documents, skipped items with reasons, and what paging needs to know.

    Raises:
        ValueError: the body is not JSON, or holds no ``value`` list.
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"WHO response is not JSON ({error}): {body[:120]!r}") from error
    items = payload.get("value") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"WHO response holds no 'value' list: {body[:120]!r}")

    pattern = keyword_pattern(keywords)
    page = WhoPage(items=len(items))
    for index, item in enumerate(items):
        try:
            published = _published_day(item)
            if day is not None and published != day:
                page.older_than_day = page.older_than_day or published < day
                continue
            document, searchable = _document(item, published)
        except _MalformedItem as problem:
            page.skipped += 1
            page.skip_reasons.append(f"who item {_item_label(item, index)}: {problem}")
            continue
        if pattern is None or pattern.search(searchable):
            page.documents.append(document)
    return page


def _page_params(day: date, page_size: int, skip: int) -> dict[str, str | int]:
    start = f"{day.isoformat()}T00:00:00Z"
    end = f"{(day + timedelta(days=1)).isoformat()}T00:00:00Z"
    return {
        "$filter": f"PublicationDate ge {start} and PublicationDate lt {end}",
        "$orderby": "PublicationDate desc",
        "$top": page_size,
        "$skip": skip,
    }


def _add_capped(result: FetchResult, documents: list[SourceDocument], max_records: int) -> None:
    for document in documents:
        result.matched += 1
        if len(result.documents) < max_records:
            result.documents.append(document)
        else:
            result.cap_hit = True


def _published_day(item: Any) -> date:
    if not isinstance(item, dict):
        raise _MalformedItem(f"not an object but {type(item).__name__}")
    published = _utc_day(item.get("PublicationDate"))
    if published is None:
        raise _MalformedItem(f"PublicationDate {item.get('PublicationDate')!r} is not a date")
    return published


def _document(item: dict[str, Any], published: date) -> tuple[SourceDocument, str]:
    title = _title(item)
    sections = {name: _section_text(item, name) for name, _ in SECTIONS}
    text = "\n\n".join(f"{label}\n{sections[name]}" for name, label in SECTIONS if sections[name])
    if not text:
        raise _MalformedItem("no Summary, Overview, Assessment or Advice text")
    updated = _utc_day(item.get("LastModified"))

    document = SourceDocument(
        source=SOURCE,
        source_id=_source_id(item),
        title=title,
        text=text,
        url=_item_url(item),
        published=published.isoformat(),
        updated=updated.isoformat() if updated else None,
        language="eng",
    )
    searchable = "\n".join([title, *(sections[name] for name in MATCHED_FIELDS)])
    return document, searchable


def _title(item: dict[str, Any]) -> str:
    override = item.get("OverrideTitle")
    raw = override if item.get("UseOverrideTitle") is True and override else item.get("Title")
    if not isinstance(raw, str) or not raw.strip():
        raise _MalformedItem(f"Title {raw!r} is not a non-empty string")
    return normalize_space(html_to_text(raw))


def _section_text(item: dict[str, Any], name: str) -> str:
    value = item.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _MalformedItem(f"{name} is a {type(value).__name__}, not HTML text")
    return html_to_text(value)


def _source_id(item: dict[str, Any]) -> str:
    for name in ("Id", "UrlName", "DonId"):
        value = item.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    raise _MalformedItem("no Id, UrlName or DonId")


def _item_url(item: dict[str, Any]) -> str | None:
    url_name = item.get("UrlName")
    if isinstance(url_name, str) and url_name.strip():
        return ITEM_URL_BASE + url_name.strip().strip("/")
    default_url = item.get("ItemDefaultUrl")
    if not isinstance(default_url, str) or not default_url.strip():
        return None
    default_url = default_url.strip()
    if default_url.startswith(("http://", "https://")):
        return default_url
    if default_url.startswith("/emergencies/"):
        return SITE_ROOT + default_url
    # The feed gives most default URLs relative to the DON item folder ("/2024-DON518").
    return ITEM_URL_BASE + default_url.lstrip("/")


def _item_label(item: Any, index: int) -> str:
    if isinstance(item, dict):
        for name in ("Id", "UrlName", "DonId"):
            if item.get(name):
                return f"{name}={item[name]}"
    return f"#{index} on its page (no id)"


def _utc_day(value: Any) -> date | None:
    """The UTC calendar day of an ISO 8601 timestamp; a timestamp without offset is UTC."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()
