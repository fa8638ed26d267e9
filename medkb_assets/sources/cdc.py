"""CDC syndicated media published or modified on one day that concern one topic.

Reads the CDC content syndication API v2: the media listing answers
``{"meta": {..., "pagination": {total, count, max, offset, ...}}, "results": [media, ...]}``
and ``/media/{id}/content`` answers a media item's syndicated HTML. Every field of a media item
is treated as optional: an item lacking what a document needs is skipped and counted, never the
page.

Topic: one listing query per keyword (``q=<keyword>``, a phrase in quotes) rather than one
query joining the keywords with OR. The API documents ``q`` as a full-text search of topic,
name and description and says nothing of boolean operators, so separate queries are the reading
that certainly works. An item found under several keywords is kept once.

Day: an item belongs to the UTC day of its ``datePublished`` or of its ``dateModified``. The
listing offers no filter on either, so it is sorted by ``dateModified``, newest first, and read
until an item modified before the day appears.

Paging: ``offset`` and ``max``, ended by ``pagination.total`` or a short page. ``nextUrl`` is
not followed: the documented example shows it null on a page that is not the last, and it names
the public host even when ``CDC_API_URL`` points elsewhere.

Text: an item carrying its syndicated HTML in ``content`` (the shape ``/media/{id}/syndicate``
answers) needs nothing more. An HTML item with only a description has its page fetched from
``/media/{id}/content`` and flattened. Other media types (video, image, podcast) have no page
to syndicate, so their description is their text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from medkb_assets.sources.base import FetchResult, RawPayload, SourceDocument
from medkb_assets.sources.html_text import html_to_text, normalize_space
from medkb_assets.sources.http import (
    PacedClient,
    RetryPolicy,
    SourceUnavailableError,
    client_from_env,
)

logger = logging.getLogger(__name__)

SOURCE = "cdc"
CDC_API_URL_ENV = "CDC_API_URL"
DEFAULT_CDC_API_URL = "https://tools.cdc.gov/api/v2/resources/media"
# CDC publishes no request limit for the syndication API; two requests a second keeps a topic
# with ten keywords and a few pages to read well under a minute.
CDC_REQUESTS_PER_SECOND = 2.0
# The API's own default and documented page size.
DEFAULT_PAGE_SIZE = 100
SORT_NEWEST_MODIFIED_FIRST = "-dateModified"
HTML_MEDIA_TYPE = "html"
# ISO 639-2 codes, as PubMed records and CDC's own ``isoCode`` give them.
LANGUAGE_CODES = {"english": "eng", "eng": "eng", "spanish": "spa", "spa": "spa"}


class _MalformedItem(ValueError):
    """One media item lacks a field a document needs, or has it with an unexpected type."""


@dataclass(frozen=True)
class CdcItem:
    """One media item on the requested day.

    Attributes:
        document: the document, its text the syndicated page when the item carried one and the
            description otherwise.
        needs_content: an HTML item whose page has yet to be fetched from ``/media/{id}/content``.
        description: the item's description, the text to fall back on.
    """

    document: SourceDocument
    needs_content: bool
    description: str


@dataclass
class CdcPage:
    """What one media listing page held.

    Attributes:
        items: media items on the requested day (every valid item when no day is given).
        skipped: malformed items.
        skip_reasons: one line per skipped item.
        count: how many items the page held, valid or not.
        total: the listing's ``pagination.total``, when given.
        page_max: the listing's ``pagination.max``, when given.
        older_than_day: whether an item modified before the requested day was on the page.
    """

    items: list[CdcItem] = field(default_factory=list)
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    count: int = 0
    total: int | None = None
    page_max: int | None = None
    older_than_day: bool = False


def cdc_client(retry: RetryPolicy | None = None) -> PacedClient:
    """Builds the client for the media listing at ``CDC_API_URL`` (default: CDC's public API).

    Args:
        retry: the retry policy; the client's default when ``None``.

    Returns:
        A client whose base URL is the media collection itself.
    """
    return client_from_env(
        SOURCE, CDC_API_URL_ENV, DEFAULT_CDC_API_URL, CDC_REQUESTS_PER_SECOND, retry
    )


def fetch_cdc(
    client: PacedClient,
    day: date,
    keywords: Sequence[str],
    max_records: int,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> FetchResult:
    """Fetches the media published or modified on ``day`` that the API finds for ``keywords``.

    Args:
        client: a client whose base URL is the media collection (see :func:`cdc_client`).
        day: the partition's day (UTC).
        keywords: the topic's keywords; one listing query each.
        max_records: the most documents to return; more matches set ``cap_hit``.
        page_size: items per listing request (``max``).

    Returns:
        The documents, every response body (listing pages as ``page-NNNN.json``, syndicated
        pages as ``content-<id>.html``), and the counts.

    Raises:
        SourceUnavailableError: the listing kept failing.
        ValueError: a listing response was not the JSON expected.
    """
    result = FetchResult()
    requests_before, retries_before = client.stats.requests, client.stats.retries
    found: dict[str, CdcItem] = {}
    pages_read = 0

    for keyword in dict.fromkeys(keyword.strip() for keyword in keywords if keyword.strip()):
        pages_read += _read_listing(client, day, keyword, page_size, pages_read, found, result)

    result.matched = len(found)
    result.cap_hit = len(found) > max_records
    for item in list(found.values())[:max_records]:
        document = _with_content(client, item, result)
        if document is not None:
            result.documents.append(document)

    result.requests = client.stats.requests - requests_before
    result.retries = client.stats.retries - retries_before
    logger.info(
        "cdc %s: %d documents (%d matched, %d skipped) from %d listing pages",
        day,
        len(result.documents),
        result.matched,
        result.skipped,
        pages_read,
    )
    return result


def parse_cdc_page(body: bytes, day: date | None = None) -> CdcPage:
    """Parses one media listing body.

    Args:
        body: the response body.
        day: keep only items published or modified on this UTC day; all days when ``None``.

    Returns:
        The page's items, skipped items with reasons, and what paging needs to know.

    Raises:
        ValueError: the body is not JSON, or holds no ``results`` list.
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"CDC response is not JSON ({error}): {body[:120]!r}") from error
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
        raise ValueError(f"CDC response holds no 'results' list: {body[:120]!r}")

    pagination = _pagination(payload)
    page = CdcPage(
        count=len(results),
        total=_count_field(pagination, "total"),
        page_max=_count_field(pagination, "max"),
    )
    for index, media in enumerate(results):
        try:
            published, modified = _media_days(media)
            latest = modified or published
            if day is not None and day not in (published, modified):
                page.older_than_day = page.older_than_day or (latest is not None and latest < day)
                continue
            page.items.append(_item(media, published, modified))
        except _MalformedItem as problem:
            page.skipped += 1
            page.skip_reasons.append(f"cdc media {_media_label(media, index)}: {problem}")
    return page


def parse_cdc_content(body: bytes) -> str:
    """Flattens the body ``/media/{id}/content`` answered to plain text.

    The endpoint answers the syndicated HTML itself; a JSON body in the ``/syndicate`` shape
    (``{"results": {"content": "<html>"}}``) is read too.

    Args:
        body: the response body.

    Returns:
        The page's text; empty when it holds none.
    """
    markup = body.decode("utf-8", errors="replace")
    if markup.lstrip().startswith("{"):
        try:
            payload = json.loads(markup)
        except json.JSONDecodeError:
            payload = None
        results = payload.get("results") if isinstance(payload, dict) else None
        content = results.get("content") if isinstance(results, dict) else None
        if isinstance(content, str):
            markup = content
    return html_to_text(markup)


def _read_listing(
    client: PacedClient,
    day: date,
    keyword: str,
    page_size: int,
    pages_before: int,
    found: dict[str, CdcItem],
    result: FetchResult,
) -> int:
    """Reads one keyword's listing into ``found``; returns how many pages it took."""
    query = f'"{keyword}"' if " " in keyword else keyword
    offset = 0
    pages_read = 0
    previous_body = b""

    while True:
        params: dict[str, str | int] = {
            "q": query,
            "sort": SORT_NEWEST_MODIFIED_FIRST,
            "max": page_size,
            "offset": offset,
        }
        response = client.get("", params=params)
        if response.content == previous_body:
            logger.warning("cdc %s %r: offset=%d repeated a page; stopping", day, keyword, offset)
            break
        previous_body = response.content
        pages_read += 1
        result.payloads.append(
            RawPayload(
                f"page-{pages_before + pages_read:04d}.json",
                response.content,
                {name: str(value) for name, value in params.items()},
            )
        )
        page = parse_cdc_page(response.content, day=day)
        result.skipped += page.skipped
        result.skip_reasons.extend(page.skip_reasons)
        for item in page.items:
            found.setdefault(item.document.source_id, item)

        offset += page.count
        if page.total is not None:
            last_page = offset >= page.total
        else:
            last_page = page.count < (page.page_max or page_size)
        if page.count == 0 or last_page or page.older_than_day:
            return pages_read
    return pages_read


def _with_content(client: PacedClient, item: CdcItem, result: FetchResult) -> SourceDocument | None:
    if not item.needs_content:
        return item.document
    media_id = item.document.source_id
    try:
        response = client.get(f"{media_id}/content")
    except SourceUnavailableError as error:
        # One stale page must not cost the partition its other items; the reason lands in the
        # asset's metadata, and a rerun picks the page up once CDC serves it again.
        logger.warning("cdc media %s: content unavailable: %s", media_id, error)
        if not item.description:
            result.skipped += 1
            result.skip_reasons.append(f"cdc media {media_id}: no description and {error}")
            return None
        result.skip_reasons.append(f"cdc media {media_id}: kept its description only; {error}")
        return replace(item.document, text=item.description)

    result.payloads.append(
        RawPayload(f"content-{media_id}.html", response.content, {"path": f"{media_id}/content"})
    )
    text = parse_cdc_content(response.content)
    return replace(item.document, text=text or item.description)


def _item(media: dict[str, Any], published: date | None, modified: date | None) -> CdcItem:
    media_id = _media_id(media)
    name = media.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _MalformedItem(f"name {name!r} is not a non-empty string")
    description = html_to_text(_optional_text(media, "description"))
    content = _optional_text(media, "content")
    media_type = media.get("mediaType")
    is_html = isinstance(media_type, str) and media_type.strip().lower() == HTML_MEDIA_TYPE

    text = html_to_text(content) if content else description
    needs_content = not content and is_html
    if not text and not needs_content:
        raise _MalformedItem("no content and no description")

    document = SourceDocument(
        source=SOURCE,
        source_id=media_id,
        title=normalize_space(html_to_text(name)),
        text=text,
        url=_media_url(media),
        published=published.isoformat() if published else None,
        updated=modified.isoformat() if modified else None,
        language=_language(media.get("language")),
        keywords=_tag_names(media.get("tags")),
    )
    return CdcItem(document=document, needs_content=needs_content, description=description)


def _media_days(media: Any) -> tuple[date | None, date | None]:
    if not isinstance(media, dict):
        raise _MalformedItem(f"not an object but {type(media).__name__}")
    published = _utc_day(media.get("datePublished"))
    modified = _utc_day(media.get("dateModified"))
    if published is None and modified is None:
        raise _MalformedItem(
            f"neither datePublished {media.get('datePublished')!r} nor dateModified "
            f"{media.get('dateModified')!r} is a date"
        )
    return published, modified


def _media_id(media: dict[str, Any]) -> str:
    media_id = media.get("id")
    if isinstance(media_id, bool) or not isinstance(media_id, int | str):
        raise _MalformedItem(f"id {media_id!r} is not a number or string")
    if not str(media_id).strip():
        raise _MalformedItem("id is blank")
    return str(media_id).strip()


def _optional_text(media: dict[str, Any], name: str) -> str:
    value = media.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _MalformedItem(f"{name} is a {type(value).__name__}, not text")
    return value


def _media_url(media: dict[str, Any]) -> str | None:
    for name in ("sourceUrl", "targetUrl"):
        value = media.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _language(value: Any) -> str | None:
    names: list[Any] = [value]
    if isinstance(value, dict):
        names = [value.get("isoCode"), value.get("name")]
    for name in names:
        if isinstance(name, str) and name.strip().lower() in LANGUAGE_CODES:
            return LANGUAGE_CODES[name.strip().lower()]
    return None


def _tag_names(tags: Any) -> tuple[str, ...]:
    if not isinstance(tags, list):
        return ()
    names = (tag.get("name") for tag in tags if isinstance(tag, dict))
    return tuple(dict.fromkeys(normalize_space(name) for name in names if isinstance(name, str)))


def _pagination(payload: dict[str, Any]) -> dict[str, Any]:
    meta = payload.get("meta")
    pagination = meta.get("pagination") if isinstance(meta, dict) else None
    return pagination if isinstance(pagination, dict) else {}


def _count_field(pagination: dict[str, Any], name: str) -> int | None:
    value = pagination.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _media_label(media: Any, index: int) -> str:
    if isinstance(media, dict) and media.get("id") is not None:
        return f"id={media['id']}"
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
