"""MedlinePlus health topics first published on one day that concern one topic.

Two ways in, one record shape:

- The web service (``https://wsearch.nlm.nih.gov/ws/query?db=healthTopics&term=...``) answers
  ``<nlmSearchResult>`` with ``<list num= start= per=>`` of ``<document rank= url=>`` elements.
  Its default "brief" result holds ``<content name=...>`` fields (``title``, ``FullSummary``,
  ``altTitle``, ``mesh``, ``groupName``, ``snippet``) with search-term highlighting
  (``<span class="qt0">``), but no date. Requests therefore ask for ``rettype=all``, which adds
  each topic's full ``<health-topic>`` record in the format of the health-topics XML files,
  ``date-created`` included. The record wins where both give a field.
- The health-topics XML file NLM publishes daily (``mplus_topics_YYYY-MM-DD.xml``, every
  ``<health-topic>`` in one file) is read by :func:`read_medlineplus_topics_file`.

Day: a topic belongs to the day of its ``date-created``, the day it first appeared on
MedlinePlus, just as a PubMed partition holds the records that entered PubMed that day. A
document the web service returns without a ``<health-topic>`` record has no date to place it
on; it is skipped and counted, so a service that stopped sending records shows in the counts
rather than silently emptying partitions. Neither source dates a revision of a topic, so edits
to an existing topic are not picked up by day.

Topic: one web-service query per keyword (a phrase in quotes), results trusted as the service's
match. In the XML file a topic matches when its title, also-called names, MeSH headings, groups
or summary mention a keyword as a whole word, ignoring case.

Pacing: NLM blocks an address that sends MedlinePlus more than a set number of requests a
minute (100 for MedlinePlus Connect, 85 for the web service, going by NLM's pages), for
minutes at a time, so the client keeps to 85 a minute.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError, tostring

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException

from medkb_assets.sources.base import FetchResult, RawPayload, SourceDocument
from medkb_assets.sources.html_text import html_to_text, keyword_pattern, normalize_space
from medkb_assets.sources.http import PacedClient, RetryPolicy, client_from_env

logger = logging.getLogger(__name__)

SOURCE = "medlineplus"
MEDLINEPLUS_URL_ENV = "MEDLINEPLUS_URL"
DEFAULT_MEDLINEPLUS_URL = "https://wsearch.nlm.nih.gov/ws/query"
MEDLINEPLUS_REQUESTS_PER_MINUTE = 85
DATABASE = "healthTopics"
# "all" adds the full health-topic record, the only part of a result that carries a date.
RESULT_TYPE = "all"
DEFAULT_PAGE_SIZE = 50
DATE_CREATED_FORMAT = "%m/%d/%Y"
# ISO 639-2 codes, as PubMed records give them.
LANGUAGE_CODES = {"english": "eng", "spanish": "spa"}
# Brief result fields holding HTML whose paragraphs are worth keeping.
SUMMARY_FIELDS = frozenset({"FullSummary", "snippet"})


class _MalformedTopic(ValueError):
    """One search result or health-topic record lacks a field a document needs."""


@dataclass
class TopicsPage:
    """What one web-service page or health-topics file held.

    Attributes:
        documents: topics created on the requested day (every valid topic when no day is given)
            and, for a file, matching the keywords.
        skipped: malformed results or records.
        skip_reasons: one line per skipped result or record.
        returned: how many results or records the body held, valid or not.
        total: the search's total number of results (``<count>`` or ``list/@num``), when given.
    """

    documents: list[SourceDocument] = field(default_factory=list)
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    returned: int = 0
    total: int | None = None


@dataclass
class _Topic:
    """The fields a document is made of, from a record, a brief result or both."""

    title: str = ""
    url: str | None = None
    topic_id: str | None = None
    created: date | None = None
    language: str | None = None
    summary_html: str = ""
    also_called: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    mesh: list[str] = field(default_factory=list)


def medlineplus_client(retry: RetryPolicy | None = None) -> PacedClient:
    """Builds the web-service client at ``MEDLINEPLUS_URL`` (default: NLM's public service).

    Args:
        retry: the retry policy; the client's default when ``None``.

    Returns:
        A client whose base URL is the query endpoint, paced to 85 requests a minute.
    """
    return client_from_env(
        SOURCE,
        MEDLINEPLUS_URL_ENV,
        DEFAULT_MEDLINEPLUS_URL,
        MEDLINEPLUS_REQUESTS_PER_MINUTE / 60,
        retry,
    )


def fetch_medlineplus(
    client: PacedClient,
    day: date,
    keywords: Sequence[str],
    max_records: int,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> FetchResult:
    """Fetches the health topics created on ``day`` that the web service finds for ``keywords``.

    Args:
        client: a client whose base URL is the query endpoint (see :func:`medlineplus_client`).
        day: the partition's day.
        keywords: the topic's keywords; one query each.
        max_records: the most documents to return; more matches set ``cap_hit``.
        page_size: results per request (``retmax``).

    Returns:
        The documents, every response body as ``page-NNNN.xml``, and the counts.

    Raises:
        SourceUnavailableError: the service kept failing.
        ValueError: a response was not the XML expected.
    """
    result = FetchResult()
    requests_before, retries_before = client.stats.requests, client.stats.retries
    found: dict[str, SourceDocument] = {}
    pages_read = 0

    for keyword in dict.fromkeys(keyword.strip() for keyword in keywords if keyword.strip()):
        pages_read += _read_search(client, day, keyword, page_size, pages_read, found, result)

    result.matched = len(found)
    result.cap_hit = len(found) > max_records
    result.documents = list(found.values())[:max_records]
    result.requests = client.stats.requests - requests_before
    result.retries = client.stats.retries - retries_before
    logger.info(
        "medlineplus %s: %d documents (%d matched, %d skipped) from %d pages",
        day,
        len(result.documents),
        result.matched,
        result.skipped,
        pages_read,
    )
    return result


def read_medlineplus_topics_file(
    path: Path, day: date, keywords: Sequence[str], max_records: int
) -> FetchResult:
    """Reads the health topics created on ``day`` that match ``keywords`` from an XML file.

    The file is NLM's ``mplus_topics_YYYY-MM-DD.xml``. It holds every topic and runs to tens
    of megabytes, so the payload kept is not the file but the matching ``<health-topic>``
    records, re-serialised under a ``<health-topics>`` root, which re-parses to the same
    documents.

    Args:
        path: the XML file.
        day: the partition's day.
        keywords: the topic's keywords.
        max_records: the most documents to return; more matches set ``cap_hit``.

    Returns:
        The documents, the matching records as ``health-topics.xml``, and the counts.

    Raises:
        ValueError: the file is not health-topics XML.
    """
    root = _parse_xml(path.read_bytes(), "MedlinePlus health-topics file")
    page, records = _topics_from_file(root, day, keywords)
    result = FetchResult(
        documents=page.documents[:max_records],
        matched=len(page.documents),
        skipped=page.skipped,
        skip_reasons=page.skip_reasons,
        cap_hit=len(page.documents) > max_records,
    )
    kept = Element("health-topics", {"total": str(len(records))})
    kept.extend(records)
    result.payloads.append(
        RawPayload("health-topics.xml", tostring(kept, encoding="utf-8"), {"file": str(path)})
    )
    logger.info(
        "medlineplus %s: %d documents (%d matched, %d skipped) from %s",
        day,
        len(result.documents),
        result.matched,
        result.skipped,
        path,
    )
    return result


def parse_medlineplus_page(body: bytes, day: date | None = None) -> TopicsPage:
    """Parses one web-service response body.

    Args:
        body: the response body.
        day: keep only topics created on this day; all dated topics when ``None``.

    Returns:
        The page's documents, skipped results with reasons, and what paging needs to know.

    Raises:
        ValueError: the body is not XML, or its root is not ``nlmSearchResult``.
    """
    root = _parse_xml(body, "MedlinePlus web service response")
    if root.tag != "nlmSearchResult":
        raise ValueError(f"MedlinePlus response root is <{root.tag}>, not <nlmSearchResult>")
    result_list = root.find("list")
    results = result_list.findall("document") if result_list is not None else []
    page = TopicsPage(
        returned=len(results),
        total=_count(root.findtext("count"))
        or _count(result_list.get("num") if result_list is not None else None),
    )

    for document_element in results:
        label = f"rank {document_element.get('rank', '?')} ({document_element.get('url')})"
        try:
            topic = _merged_topic(document_element)
            if topic.created is None:
                raise _MalformedTopic("no health-topic record with a date-created")
            if day is None or topic.created == day:
                page.documents.append(_document(topic))
        except _MalformedTopic as problem:
            page.skipped += 1
            page.skip_reasons.append(f"medlineplus result {label}: {problem}")
    return page


def parse_health_topics(
    body: bytes, day: date | None = None, keywords: Sequence[str] = ()
) -> TopicsPage:
    """Parses a health-topics XML file (or the payload :func:`read_medlineplus_topics_file` keeps).

    Args:
        body: the file's bytes.
        day: keep only topics created on this day; all days when ``None``.
        keywords: keep only topics mentioning one; all topics when empty.

    Returns:
        The documents, and the records skipped with reasons.

    Raises:
        ValueError: the body is not XML, or its root is not ``health-topics``.
    """
    page, _ = _topics_from_file(_parse_xml(body, "MedlinePlus health-topics file"), day, keywords)
    return page


def _read_search(
    client: PacedClient,
    day: date,
    keyword: str,
    page_size: int,
    pages_before: int,
    found: dict[str, SourceDocument],
    result: FetchResult,
) -> int:
    """Reads one keyword's search results into ``found``; returns how many pages it took."""
    term = f'"{keyword}"' if " " in keyword else keyword
    retstart = 0
    pages_read = 0
    previous_body = b""

    while True:
        params: dict[str, str | int] = {
            "db": DATABASE,
            "term": term,
            "rettype": RESULT_TYPE,
            "retstart": retstart,
            "retmax": page_size,
        }
        response = client.get("", params=params)
        if response.content == previous_body:
            logger.warning("medlineplus %r: retstart=%d repeated a page", keyword, retstart)
            break
        previous_body = response.content
        pages_read += 1
        result.payloads.append(
            RawPayload(
                f"page-{pages_before + pages_read:04d}.xml",
                response.content,
                {name: str(value) for name, value in params.items()},
            )
        )
        page = parse_medlineplus_page(response.content, day=day)
        result.skipped += page.skipped
        result.skip_reasons.extend(page.skip_reasons)
        for document in page.documents:
            found.setdefault(document.source_id, document)

        retstart += page.returned
        if page.returned == 0 or page.total is None or retstart >= page.total:
            return pages_read
    return pages_read


def _topics_from_file(
    root: Element, day: date | None, keywords: Sequence[str]
) -> tuple[TopicsPage, list[Element]]:
    if root.tag != "health-topics":
        raise ValueError(f"MedlinePlus topics file root is <{root.tag}>, not <health-topics>")
    pattern = keyword_pattern(keywords)
    records = root.findall("health-topic")
    page = TopicsPage(returned=len(records), total=len(records))
    kept: list[Element] = []

    for index, record in enumerate(records):
        try:
            topic = _record_topic(record)
            if topic.created is None:
                raise _MalformedTopic("no date-created")
            if day is not None and topic.created != day:
                continue
            document = _document(topic)
        except _MalformedTopic as problem:
            page.skipped += 1
            page.skip_reasons.append(
                f"medlineplus record {index} ({record.get('id') or 'no id'}): {problem}"
            )
            continue
        searchable = "\n".join(
            [document.title, document.text, *topic.also_called, *topic.mesh, *topic.groups]
        )
        if pattern is None or pattern.search(searchable):
            page.documents.append(document)
            kept.append(record)
    return page, kept


def _merged_topic(document_element: Element) -> _Topic:
    record = document_element.find(".//health-topic")
    topic = _record_topic(record) if record is not None else _Topic()
    brief = _brief_fields(document_element)

    topic.title = topic.title or _first(brief.get("title"))
    topic.url = topic.url or _attribute(document_element, "url")
    topic.summary_html = topic.summary_html or _first(brief.get("FullSummary"))
    topic.summary_html = topic.summary_html or _first(brief.get("snippet"))
    topic.also_called = topic.also_called or brief.get("altTitle", [])
    topic.groups = topic.groups or brief.get("groupName", [])
    topic.mesh = topic.mesh or brief.get("mesh", [])
    return topic


def _record_topic(record: Element) -> _Topic:
    created_text = record.get("date-created")
    created = None
    if created_text:
        try:
            created = datetime.strptime(created_text.strip(), DATE_CREATED_FORMAT).date()
        except ValueError as error:
            raise _MalformedTopic(f"date-created {created_text!r} is not MM/DD/YYYY") from error
    summary = record.find("full-summary")
    return _Topic(
        title=normalize_space(record.get("title") or ""),
        url=_attribute(record, "url"),
        topic_id=_attribute(record, "id"),
        created=created,
        language=LANGUAGE_CODES.get((record.get("language") or "").strip().lower()),
        summary_html="".join(summary.itertext()) if summary is not None else "",
        also_called=_texts(record.findall("also-called")),
        groups=_texts(record.findall("group")),
        mesh=_texts(record.findall("mesh-heading/descriptor")),
    )


def _brief_fields(document_element: Element) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for content in document_element.findall("content"):
        name = content.get("name")
        if not name or content.find("health-topic") is not None:
            continue
        # Highlighting arrives as child <span> elements or as escaped markup; both flatten away,
        # the summaries later and with their paragraphs kept.
        markup = "".join(content.itertext())
        value = markup if name in SUMMARY_FIELDS else normalize_space(html_to_text(markup))
        if value.strip():
            fields.setdefault(name, []).append(value)
    return fields


def _document(topic: _Topic) -> SourceDocument:
    title = normalize_space(html_to_text(topic.title))
    if not title:
        raise _MalformedTopic("no title")
    text = html_to_text(topic.summary_html)
    if not text:
        raise _MalformedTopic("no summary")
    source_id = topic.topic_id or _url_slug(topic.url)
    if not source_id:
        raise _MalformedTopic("no id and no url")
    return SourceDocument(
        source=SOURCE,
        source_id=source_id,
        title=title,
        text=text,
        url=topic.url,
        published=topic.created.isoformat() if topic.created else None,
        language=topic.language,
        keywords=tuple(dict.fromkeys([*topic.also_called, *topic.groups])),
        mesh_terms=tuple(dict.fromkeys(topic.mesh)),
    )


def _parse_xml(body: bytes, what: str) -> Element:
    try:
        root: Element = SafeElementTree.fromstring(body)
    except (ParseError, DefusedXmlException) as error:
        raise ValueError(f"{what} is not XML ({error}): {body[:120]!r}") from error
    return root


def _texts(elements: Iterable[Element]) -> list[str]:
    texts = (normalize_space(html_to_text("".join(element.itertext()))) for element in elements)
    return list(dict.fromkeys(text for text in texts if text))


def _first(values: list[str] | None) -> str:
    return values[0] if values else ""


def _attribute(element: Element, name: str) -> str | None:
    value = element.get(name)
    return value.strip() if value and value.strip() else None


def _url_slug(url: str | None) -> str | None:
    if not url:
        return None
    slug = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".html")
    return slug or None


def _count(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        count = int(value.strip())
    except ValueError:
        return None
    return count if count >= 0 else None
