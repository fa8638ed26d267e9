"""WHO Disease Outbreak News over real HTTP against a stand-in OData service."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from medkb_assets.sources.http import (
    PacedClient,
    RateLimiter,
    RetryPolicy,
    SourceUnavailableError,
    shared_rate_limiter,
)
from medkb_assets.sources.who import (
    WHO_REQUESTS_PER_SECOND,
    fetch_who,
    parse_who_page,
    who_client,
)
from medkb_assets_tests.stand_in import Handler, Reply, SeenRequest, StandInServer, stand_in_server

FIXTURES = Path(__file__).parents[1] / "fixtures" / "who"
ENDPOINT = "/api/news/diseaseoutbreaknews"
DAY = date(2016, 3, 29)
ZIKA_KEYWORDS = ("zika", "microcephaly")
ZIKA_TITLES_ON_DAY = {
    "Zika virus infection - Dominica and Cuba",
    "Microcephaly - Panama",
    "Guillain-Barré syndrome - Panama",
}
FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.001, max_delay=0.005)
DATE_FILTER = re.compile(r"PublicationDate ge (\S+) and PublicationDate lt (\S+)")


def _catalogue() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads((FIXTURES / "don_items.json").read_text())
    return items


def _odata_service(items: list[dict[str, Any]], *, honours_filter: bool = True) -> Handler:
    """Answers like the DON feed: $filter on PublicationDate, newest first, $skip and $top."""

    def answer(request: SeenRequest) -> Reply:
        selected = items
        window = DATE_FILTER.fullmatch(request.params.get("$filter", ""))
        if honours_filter and window:
            start, end = (datetime.fromisoformat(bound) for bound in window.groups())
            selected = [
                item
                for item in items
                if start <= datetime.fromisoformat(item["PublicationDate"]) < end
            ]
        selected = sorted(selected, key=lambda item: item["PublicationDate"], reverse=True)
        skip = int(request.params.get("$skip", 0))
        top = int(request.params.get("$top", 100))
        body = {
            "@odata.context": "https://www.who.int/api/news/$metadata#diseaseoutbreaknews",
            "value": selected[skip : skip + top],
        }
        return Reply(200, json.dumps(body).encode())

    return answer


def _serve(server: StandInServer, handler: Handler) -> None:
    # The client may request its base URL with or without a trailing slash.
    server.route(ENDPOINT, handler)
    server.route(ENDPOINT + "/", handler)


def _listing_requests(server: StandInServer) -> list[SeenRequest]:
    return server.requests_to(ENDPOINT) + server.requests_to(ENDPOINT + "/")


@pytest.fixture
def server() -> Iterator[StandInServer]:
    with stand_in_server() as running:
        _serve(running, _odata_service(_catalogue()))
        yield running


@pytest.fixture
def client(server: StandInServer) -> Iterator[PacedClient]:
    with PacedClient(
        "who", server.base_url + ENDPOINT, rate_limiter=RateLimiter(1000), retry=FAST_RETRY
    ) as paced:
        yield paced


def test_items_of_the_day_mentioning_a_keyword_are_read_across_pages(
    server: StandInServer, client: PacedClient
) -> None:
    result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100, page_size=2)

    assert {document.title for document in result.documents} == ZIKA_TITLES_ON_DAY
    requests = _listing_requests(server)
    assert [request.params["$skip"] for request in requests] == ["0", "2", "4"]
    assert all(request.params["$top"] == "2" for request in requests)
    assert requests[0].params["$orderby"] == "PublicationDate desc"
    assert requests[0].params["$filter"] == (
        "PublicationDate ge 2016-03-29T00:00:00Z and PublicationDate lt 2016-03-30T00:00:00Z"
    )
    assert result.requests == 3
    assert result.matched == 3
    assert not result.cap_hit


def test_items_of_other_days_or_other_topics_are_left_out(client: PacedClient) -> None:
    result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100, page_size=2)

    titles = {document.title for document in result.documents}
    assert "Human infection with avian influenza A(H7N9) virus - China" not in titles
    assert "Microcephaly - France - Martinique" not in titles
    assert "Guillain-Barré syndrome - United States of America" not in titles
    assert {document.published for document in result.documents} == {"2016-03-29"}


def test_paging_stops_at_the_first_item_older_than_the_day_when_the_filter_is_ignored() -> None:
    with stand_in_server() as server:
        _serve(server, _odata_service(_catalogue(), honours_filter=False))
        with PacedClient(
            "who", server.base_url + ENDPOINT, rate_limiter=RateLimiter(1000), retry=FAST_RETRY
        ) as client:
            result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100, page_size=2)

        # Eight pages hold the whole catalogue; the fourth is the first with an older item.
        assert len(_listing_requests(server)) == 4
    assert {document.title for document in result.documents} == ZIKA_TITLES_ON_DAY


def test_documents_carry_ids_links_dates_and_labelled_plain_text(client: PacedClient) -> None:
    result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100)

    zika = next(doc for doc in result.documents if doc.title.startswith("Zika virus infection"))
    assert zika.doc_id == "who:6a3661a9-908c-5492-8589-f91fa7c89639"
    assert zika.url == (
        "https://www.who.int/emergencies/disease-outbreak-news/item/"
        "29-march-2016-zika-dominica-and-cuba-en"
    )
    assert (zika.published, zika.updated, zika.language) == ("2016-03-29", "2016-03-29", "eng")
    assert zika.text.startswith(
        "Overview\nDominica reported 1 laboratory-confirmed case(s) of Zika virus disease.\n"
        "Cuba reported 1 laboratory-confirmed case(s) of Zika virus disease."
    )
    assert "\n\nWHO risk assessment\nWHO’s assessment of the Zika virus disease" in zika.text
    assert zika.text.endswith(
        "WHO advice\nWHO advises the following measures:\n"
        "- strengthen surveillance & laboratory capacity;\n- inform travellers of the risk."
    )
    assert not re.search(r"<[a-z/]|&\w+;", zika.text)


def test_malformed_item_is_skipped_and_counted_while_the_others_land(client: PacedClient) -> None:
    result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100, page_size=2)

    untitled = next(item for item in _catalogue() if item["Title"] is None)
    assert result.skipped == 1
    assert len(result.skip_reasons) == 1
    assert f"Id={untitled['Id']}" in result.skip_reasons[0]
    assert "Title None is not a non-empty string" in result.skip_reasons[0]
    assert {document.title for document in result.documents} == ZIKA_TITLES_ON_DAY


def test_every_response_body_is_kept_verbatim_with_its_request(
    server: StandInServer, client: PacedClient
) -> None:
    result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100, page_size=2)

    assert [payload.name for payload in result.payloads] == [
        "page-0001.json",
        "page-0002.json",
        "page-0003.json",
    ]
    assert [payload.request["$skip"] for payload in result.payloads] == ["0", "2", "4"]
    reparsed = [
        document.title
        for payload in result.payloads
        for document in parse_who_page(payload.body, DAY, ZIKA_KEYWORDS).documents
    ]
    assert sorted(reparsed) == sorted(ZIKA_TITLES_ON_DAY)


def test_a_page_answered_503_is_retried_then_read(
    server: StandInServer, client: PacedClient
) -> None:
    # Queued on both spellings of the endpoint; only the one the client uses is consumed.
    server.inject(ENDPOINT, Reply(503, b"busy"))
    server.inject(ENDPOINT + "/", Reply(503, b"busy"))

    result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100)

    assert result.retries == 1
    assert result.requests == 2
    assert {document.title for document in result.documents} == ZIKA_TITLES_ON_DAY


def test_a_service_answering_503_throughout_raises_after_bounded_retries() -> None:
    with stand_in_server() as server:
        _serve(server, lambda request: Reply(503, b"maintenance"))
        with PacedClient(
            "who", server.base_url + ENDPOINT, rate_limiter=RateLimiter(1000), retry=FAST_RETRY
        ) as client:
            with pytest.raises(SourceUnavailableError, match="gave up after 2 retries"):
                fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100)

        assert len(_listing_requests(server)) == FAST_RETRY.max_retries + 1


def test_a_body_that_is_not_json_raises_a_clear_error() -> None:
    with stand_in_server() as server:
        _serve(server, lambda request: Reply(200, b"<html>Maintenance</html>", "text/html"))
        with PacedClient(
            "who", server.base_url + ENDPOINT, rate_limiter=RateLimiter(1000), retry=FAST_RETRY
        ) as client:
            with pytest.raises(ValueError, match="WHO response is not JSON"):
                fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100)


def test_more_matches_than_the_cap_are_reported(client: PacedClient) -> None:
    result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=2, page_size=2)

    assert len(result.documents) == 2
    assert result.cap_hit
    assert result.matched == 3


def test_keywords_match_whole_words_in_title_summary_and_overview_only() -> None:
    item = {
        "Id": "a1",
        "Title": "Cholera - Haiti",
        "PublicationDate": "2016-03-29T09:00:00Z",
        "Summary": "<p>Acute watery diarrhoea.</p>",
        "Overview": "<p>Cases of cholera rose.</p>",
        "Advice": "<p>Dengue vector control remains important.</p>",
    }
    body = json.dumps({"value": [item]}).encode()

    assert parse_who_page(body, DAY, ["cholera"]).documents
    assert parse_who_page(body, DAY, ["DIARRHOEA"]).documents
    assert not parse_who_page(body, DAY, ["dengue"]).documents
    assert not parse_who_page(body, DAY, ["chol"]).documents


def test_publication_date_is_compared_in_utc() -> None:
    item = {
        "Id": "b2",
        "Title": "Zika virus infection - Late report",
        "PublicationDate": "2016-03-30T01:00:00+02:00",
        "Overview": "<p>Zika.</p>",
    }
    body = json.dumps({"value": [item]}).encode()

    assert [doc.published for doc in parse_who_page(body, DAY).documents] == ["2016-03-29"]
    assert not parse_who_page(body, date(2016, 3, 30)).documents


def test_identifier_and_link_fall_back_when_id_or_url_name_is_missing() -> None:
    items = [
        {
            "DonId": "2024-DON518",
            "ItemDefaultUrl": "/2024-DON518",
            "Title": "Dengue - Global situation",
            "PublicationDate": "2024-05-30T18:00:00Z",
            "Overview": "<p>Dengue.</p>",
        },
        {
            "UrlName": "2023-DON481",
            "Title": "Dengue - Bangladesh",
            "PublicationDate": "2023-08-11T11:52:45Z",
            "Overview": "<p>Dengue.</p>",
        },
    ]

    page = parse_who_page(json.dumps({"value": items}).encode())

    assert [(doc.source_id, doc.url) for doc in page.documents] == [
        ("2024-DON518", "https://www.who.int/emergencies/disease-outbreak-news/item/2024-DON518"),
        ("2023-DON481", "https://www.who.int/emergencies/disease-outbreak-news/item/2023-DON481"),
    ]


def test_unexpected_field_types_skip_only_their_item() -> None:
    items = [
        {"Id": "c3", "Title": "Zika - A", "PublicationDate": "2016-03-29T01:00:00Z", "Overview": 7},
        {"Id": "c4", "Title": "Zika - B", "PublicationDate": "not a date", "Overview": "<p>x</p>"},
        ["not", "an", "object"],
        {"Title": "Zika - C", "PublicationDate": "2016-03-29T02:00:00Z", "Overview": "<p>x</p>"},
        {"Id": "c5", "Title": "Zika - D", "PublicationDate": "2016-03-29T03:00:00Z"},
        {
            "Id": "c6",
            "Title": "Zika - E",
            "PublicationDate": "2016-03-29T04:00:00Z",
            "Advice": "ok",
        },
    ]

    page = parse_who_page(json.dumps({"value": items}).encode(), DAY)

    assert [doc.source_id for doc in page.documents] == ["c6"]
    assert page.skipped == 5
    assert "Overview is a int" in page.skip_reasons[0]
    assert "PublicationDate 'not a date'" in page.skip_reasons[1]
    assert "not an object but list" in page.skip_reasons[2]
    assert "no Id, UrlName or DonId" in page.skip_reasons[3]
    assert "no Summary, Overview" in page.skip_reasons[4]


def test_a_body_without_a_value_list_raises() -> None:
    with pytest.raises(ValueError, match="no 'value' list"):
        parse_who_page(b'{"error": {"message": "bad $filter"}}')


def test_no_keywords_means_no_request(server: StandInServer, client: PacedClient) -> None:
    result = fetch_who(client, DAY, [" "], max_records=100)

    assert result.documents == []
    assert _listing_requests(server) == []


def test_who_client_reads_its_endpoint_from_the_environment(
    server: StandInServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHO_API_URL", server.base_url + ENDPOINT)

    with who_client(retry=FAST_RETRY) as client:
        result = fetch_who(client, DAY, ZIKA_KEYWORDS, max_records=100)
        assert client.rate_limiter is shared_rate_limiter("who", WHO_REQUESTS_PER_SECOND)

    assert {document.title for document in result.documents} == ZIKA_TITLES_ON_DAY
    assert len(_listing_requests(server)) == 1
