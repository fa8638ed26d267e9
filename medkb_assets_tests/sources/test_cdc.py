"""CDC content syndication API over real HTTP against a stand-in media service."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from medkb_assets.sources.cdc import (
    CDC_REQUESTS_PER_SECOND,
    cdc_client,
    fetch_cdc,
    parse_cdc_content,
    parse_cdc_page,
)
from medkb_assets.sources.http import (
    PacedClient,
    RateLimiter,
    RetryPolicy,
    SourceUnavailableError,
    shared_rate_limiter,
)
from medkb_assets_tests.stand_in import Handler, Reply, SeenRequest, StandInServer, stand_in_server

FIXTURES = Path(__file__).parents[1] / "fixtures" / "cdc"
ENDPOINT = "/api/v2/resources/media"
DAY = date(2013, 11, 22)
DIABETES_KEYWORDS = ("diabetes", "glycemic")
IDS_ON_DAY = {"1001", "1002", "1005"}
FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.001, max_delay=0.005)


def _catalogue() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads((FIXTURES / "media_items.json").read_text())
    return items


def _modified(media: dict[str, Any]) -> datetime:
    moment = datetime.fromisoformat(media["dateModified"])
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _media_service(items: list[dict[str, Any]]) -> Handler:
    """Answers like the media listing: full-text q, sort=-dateModified, offset and max."""

    def answer(request: SeenRequest) -> Reply:
        words = re.compile(rf"\b{re.escape(request.params.get('q', '').strip(chr(34)))}\b", re.I)
        selected = [
            media
            for media in items
            if words.search(
                " ".join(
                    [
                        str(media.get("name")),
                        str(media.get("description")),
                        *(tag["name"] for tag in media["tags"]),
                    ]
                )
            )
        ]
        if request.params.get("sort") == "-dateModified":
            selected.sort(key=_modified, reverse=True)
        offset = int(request.params.get("offset", 0))
        page_max = int(request.params.get("max", 100))
        page = selected[offset : offset + page_max]
        body = {
            "meta": {
                "status": 200,
                "message": [],
                "resultSet": {"id": "1b2c3d4e-0000-4000-8000-000000000000"},
                "pagination": {
                    "total": len(selected),
                    "count": len(page),
                    "max": page_max,
                    "offset": offset,
                    "pageNum": offset // page_max + 1,
                    "totalPages": -(-len(selected) // page_max),
                    "sort": "dateModified DESC",
                    "currentUrl": "https://tools.cdc.gov/api/v2/resources/media",
                    "previousUrl": None,
                    "nextUrl": None,
                },
            },
            "results": page,
        }
        return Reply(200, json.dumps(body).encode())

    return answer


def _content_page(request: SeenRequest) -> Reply:
    media_id = request.path.split("/")[-2]
    return Reply(200, (FIXTURES / "content" / f"{media_id}.html").read_bytes(), "text/html")


def _serve(server: StandInServer, listing: Handler) -> None:
    # The client may request its base URL with or without a trailing slash.
    server.route(ENDPOINT, listing)
    server.route(ENDPOINT + "/", listing)
    for media in _catalogue():
        server.route(f"{ENDPOINT}/{media['id']}/content", _content_page)


def _listing_requests(server: StandInServer) -> list[SeenRequest]:
    return server.requests_to(ENDPOINT) + server.requests_to(ENDPOINT + "/")


def _content_requests(server: StandInServer) -> list[str]:
    return [request.path for request in server.seen if request.path.endswith("/content")]


@pytest.fixture
def server() -> Iterator[StandInServer]:
    with stand_in_server() as running:
        _serve(running, _media_service(_catalogue()))
        yield running


@pytest.fixture
def client(server: StandInServer) -> Iterator[PacedClient]:
    with PacedClient(
        "cdc", server.base_url + ENDPOINT, rate_limiter=RateLimiter(1000), retry=FAST_RETRY
    ) as paced:
        yield paced


def test_media_of_the_day_are_read_across_pages_with_one_query_per_keyword(
    server: StandInServer, client: PacedClient
) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100, page_size=2)

    assert {document.source_id for document in result.documents} == IDS_ON_DAY
    listing = [
        (request.params["q"], request.params["offset"]) for request in _listing_requests(server)
    ]
    # The third diabetes page holds an item modified before the day, so a fourth is not read.
    assert listing == [("diabetes", "0"), ("diabetes", "2"), ("diabetes", "4"), ("glycemic", "0")]
    assert all(request.params["sort"] == "-dateModified" for request in _listing_requests(server))
    assert result.requests == 5  # four listing pages and one syndicated page


def test_media_of_other_days_or_other_topics_are_left_out(client: PacedClient) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100, page_size=2)

    ids = {document.source_id for document in result.documents}
    assert ids.isdisjoint({"1009", "1008", "1003", "1010"})  # the day after, or earlier
    assert "1004" not in ids  # influenza, published the same day


def test_media_modified_on_the_day_count_even_when_published_earlier(client: PacedClient) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)

    glycemic = next(document for document in result.documents if document.source_id == "1002")
    assert (glycemic.published, glycemic.updated) == ("2012-06-15", "2013-11-22")


def test_content_is_fetched_only_for_html_media_without_full_text(
    server: StandInServer, client: PacedClient
) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)

    assert _content_requests(server) == [f"{ENDPOINT}/1001/content"]
    by_id = {document.source_id: document for document in result.documents}
    assert by_id["1001"].text.startswith(
        "Diabetes — United States, 2006 and 2010\nIntroduction\n"
        "In 2011, an estimated 26 million persons aged ≥20 years (11.3% of the U.S. population) "
        "had diabetes (1)."
    )
    assert (
        "Methods\nTo monitor progress toward eliminating health disparities" in by_id["1001"].text
    )
    assert not re.search(r"<[a-z/]|&\w+;|metricsPage|tracking|font-size", by_id["1001"].text)
    assert by_id["1002"].text.startswith(
        "Characteristics Associated with Poor Glycemic Control Among Adults"
    )
    assert "Nationally representative estimates indicate" in by_id["1002"].text
    podcast = next(media for media in _catalogue() if media["id"] == 1005)
    assert by_id["1005"].text == podcast["description"]


def test_a_media_found_under_two_keywords_is_kept_once(client: PacedClient) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)

    assert [document.source_id for document in result.documents].count("1002") == 1
    assert result.matched == 3


def test_documents_carry_link_language_and_topic_tags(client: PacedClient) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)

    glycemic = next(document for document in result.documents if document.source_id == "1002")
    assert glycemic.doc_id == "cdc:1002"
    assert glycemic.url == "https://www.cdc.gov/mmwr/preview/mmwrhtml/su6102a6.htm"
    assert glycemic.language == "eng"
    assert glycemic.keywords == ("Diabetes", "Glycemic Control")


def test_malformed_media_is_skipped_and_counted_while_the_others_land(client: PacedClient) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)

    assert result.skipped == 1
    assert result.skip_reasons == ["cdc media id=1006: name None is not a non-empty string"]
    assert {document.source_id for document in result.documents} == IDS_ON_DAY


def test_every_response_body_is_kept_verbatim_with_its_request(client: PacedClient) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100, page_size=2)

    assert [payload.name for payload in result.payloads] == [
        "page-0001.json",
        "page-0002.json",
        "page-0003.json",
        "page-0004.json",
        "content-1001.html",
    ]
    assert result.payloads[3].request == {
        "q": "glycemic",
        "sort": "-dateModified",
        "max": "2",
        "offset": "0",
    }
    assert result.payloads[4].body == (FIXTURES / "content" / "1001.html").read_bytes()
    reparsed = {
        item.document.source_id
        for payload in result.payloads[:4]
        for item in parse_cdc_page(payload.body, DAY).items
    }
    assert reparsed == IDS_ON_DAY


def test_a_listing_page_answered_503_is_retried_then_read(
    server: StandInServer, client: PacedClient
) -> None:
    # Queued on both spellings of the endpoint; only the one the client uses is consumed.
    server.inject(ENDPOINT, Reply(503, b"busy"))
    server.inject(ENDPOINT + "/", Reply(503, b"busy"))

    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)

    assert result.retries == 1
    assert {document.source_id for document in result.documents} == IDS_ON_DAY


def test_a_service_answering_503_throughout_raises_after_bounded_retries() -> None:
    with stand_in_server() as server:
        _serve(server, lambda request: Reply(503, b"maintenance"))
        with PacedClient(
            "cdc", server.base_url + ENDPOINT, rate_limiter=RateLimiter(1000), retry=FAST_RETRY
        ) as client:
            with pytest.raises(SourceUnavailableError, match="gave up after 2 retries"):
                fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)

        assert len(_listing_requests(server)) == FAST_RETRY.max_retries + 1


def test_a_missing_syndicated_page_keeps_the_description_and_says_so(
    server: StandInServer, client: PacedClient
) -> None:
    server.route(f"{ENDPOINT}/1001/content", lambda request: Reply(404, b"no such media"))

    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)

    listed = next(media for media in _catalogue() if media["id"] == 1001)
    by_id = {document.source_id: document for document in result.documents}
    assert by_id["1001"].text == listed["description"]
    assert any("1001: kept its description only" in reason for reason in result.skip_reasons)
    assert result.skipped == 1  # still only the malformed item


def test_a_listing_body_that_is_not_json_raises_a_clear_error() -> None:
    with stand_in_server() as server:
        _serve(server, lambda request: Reply(200, b"<html>Service Unavailable</html>", "text/html"))
        with PacedClient(
            "cdc", server.base_url + ENDPOINT, rate_limiter=RateLimiter(1000), retry=FAST_RETRY
        ) as client:
            with pytest.raises(ValueError, match="CDC response is not JSON"):
                fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=100)


def test_more_matches_than_the_cap_are_reported(server: StandInServer, client: PacedClient) -> None:
    result = fetch_cdc(client, DAY, DIABETES_KEYWORDS, max_records=2)

    assert len(result.documents) == 2
    assert result.cap_hit
    assert result.matched == 3


def test_a_phrase_keyword_is_sent_quoted(server: StandInServer, client: PacedClient) -> None:
    fetch_cdc(client, DAY, ["blood pressure"], max_records=100)

    assert [request.params["q"] for request in _listing_requests(server)] == ['"blood pressure"']


def test_unexpected_field_types_skip_only_their_item() -> None:
    results = [
        {"id": 1, "name": "A", "description": "d", "datePublished": "2013-11-22T01:00:00Z"},
        {"id": 2, "name": "B", "description": 5, "datePublished": "2013-11-22T01:00:00Z"},
        {"id": True, "name": "C", "description": "d", "datePublished": "2013-11-22T01:00:00Z"},
        {"id": 4, "name": "D", "description": "d", "datePublished": "yesterday"},
        "not an object",
        {"id": 6, "name": "F", "mediaType": "Image", "datePublished": "2013-11-22T01:00:00Z"},
    ]

    page = parse_cdc_page(json.dumps({"results": results}).encode(), DAY)

    assert [item.document.source_id for item in page.items] == ["1"]
    assert page.skipped == 5
    assert "description is a int" in page.skip_reasons[0]
    assert "id True is not a number or string" in page.skip_reasons[1]
    assert "neither datePublished 'yesterday'" in page.skip_reasons[2]
    assert "not an object but str" in page.skip_reasons[3]
    assert "no content and no description" in page.skip_reasons[4]


def test_syndicate_shaped_json_content_is_read_too() -> None:
    body = json.dumps({"results": {"mediaId": 64, "content": "<p>Smoking &amp; health</p>"}})

    assert parse_cdc_content(body.encode()) == "Smoking & health"


def test_cdc_client_reads_its_endpoint_from_the_environment(
    server: StandInServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDC_API_URL", server.base_url + ENDPOINT)

    with cdc_client(retry=FAST_RETRY) as client:
        result = fetch_cdc(client, DAY, ["glycemic"], max_records=100)
        assert client.rate_limiter is shared_rate_limiter("cdc", CDC_REQUESTS_PER_SECOND)

    assert [document.source_id for document in result.documents] == ["1002"]
