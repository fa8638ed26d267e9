"""MedlinePlus health topics: the web service over real HTTP, and NLM's health-topics XML file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from medkb_assets.sources.http import (
    PACING_MARGIN,
    PacedClient,
    RateLimiter,
    RetryPolicy,
    SourceUnavailableError,
    shared_rate_limiter,
)
from medkb_assets.sources.medlineplus import (
    MEDLINEPLUS_REQUESTS_PER_MINUTE,
    fetch_medlineplus,
    medlineplus_client,
    parse_health_topics,
    parse_medlineplus_page,
    read_medlineplus_topics_file,
)
from medkb_assets_tests.stand_in import Handler, Reply, SeenRequest, StandInServer, stand_in_server

FIXTURES = Path(__file__).parents[1] / "fixtures" / "medlineplus"
TOPICS_FILE = FIXTURES / "mplus_topics_2012-07-21.xml"
ENDPOINT = "/ws/query"
DAY = date(2012, 7, 20)
KEYWORDS = ("infection", "tetanus")
TITLES_ON_DAY = {"Bacterial Infections", "Tuberculosis", "Tetanus"}
FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.001, max_delay=0.005)
NLM_LIMIT_PER_MINUTE = 100


def _web_service(request: SeenRequest) -> Reply:
    """Serves the recorded result pages by search term and retstart, as XML."""
    fixture = (
        FIXTURES / f"wsearch-{request.params['term']}-{int(request.params['retstart']):04d}.xml"
    )
    if not fixture.exists():
        return Reply(200, b"<nlmSearchResult><count>0</count></nlmSearchResult>", "text/xml")
    return Reply(200, fixture.read_bytes(), "text/xml")


def _serve(server: StandInServer, handler: Handler) -> None:
    # The client may request its base URL with or without a trailing slash.
    server.route(ENDPOINT, handler)
    server.route(ENDPOINT + "/", handler)


def _search_requests(server: StandInServer) -> list[SeenRequest]:
    return server.requests_to(ENDPOINT) + server.requests_to(ENDPOINT + "/")


@pytest.fixture
def server() -> Iterator[StandInServer]:
    with stand_in_server() as running:
        _serve(running, _web_service)
        yield running


@pytest.fixture
def client(server: StandInServer) -> Iterator[PacedClient]:
    with PacedClient(
        "medlineplus", server.base_url + ENDPOINT, rate_limiter=RateLimiter(1000), retry=FAST_RETRY
    ) as paced:
        yield paced


def test_topics_created_on_the_day_are_read_across_pages_with_one_query_per_keyword(
    server: StandInServer, client: PacedClient
) -> None:
    result = fetch_medlineplus(client, DAY, KEYWORDS, max_records=100, page_size=2)

    assert {document.title for document in result.documents} == TITLES_ON_DAY
    searches = [(r.params["term"], r.params["retstart"]) for r in _search_requests(server)]
    assert searches == [
        ("infection", "0"),
        ("infection", "2"),
        ("infection", "4"),
        ("tetanus", "0"),
    ]
    for request in _search_requests(server):
        assert (request.params["db"], request.params["rettype"]) == ("healthTopics", "all")
        assert request.params["retmax"] == "2"
    assert result.requests == 4


def test_topics_created_on_other_days_are_left_out(client: PacedClient) -> None:
    result = fetch_medlineplus(client, DAY, KEYWORDS, max_records=100, page_size=2)

    assert "Legionnaires' Disease" not in {document.title for document in result.documents}
    assert {document.published for document in result.documents} == {"2012-07-20"}


def test_a_result_without_a_dated_record_is_skipped_and_counted(client: PacedClient) -> None:
    result = fetch_medlineplus(client, DAY, KEYWORDS, max_records=100, page_size=2)

    assert result.skipped == 1
    assert result.skip_reasons == [
        "medlineplus result rank 3 (https://www.nlm.nih.gov/medlineplus/measles.html): "
        "no health-topic record with a date-created"
    ]
    assert {document.title for document in result.documents} == TITLES_ON_DAY


def test_a_topic_found_under_two_keywords_is_kept_once(client: PacedClient) -> None:
    result = fetch_medlineplus(client, DAY, KEYWORDS, max_records=100, page_size=2)

    assert [document.title for document in result.documents].count("Tetanus") == 1
    assert result.matched == 3


def test_summary_is_plain_text_without_highlighting_and_fields_are_kept(
    client: PacedClient,
) -> None:
    result = fetch_medlineplus(client, DAY, KEYWORDS, max_records=100, page_size=2)

    bacterial = next(doc for doc in result.documents if doc.title == "Bacterial Infections")
    assert bacterial.doc_id == "medlineplus:1920"
    assert bacterial.url == "https://www.nlm.nih.gov/medlineplus/bacterialinfections.html"
    assert (bacterial.published, bacterial.language) == ("2012-07-20", "eng")
    assert bacterial.mesh_terms == ("Bacterial Infections",)
    assert bacterial.keywords == ("Infections",)
    assert bacterial.text.startswith("Bacteria are living things that have only one cell. Under")
    assert "\nBut infectious bacteria can make you ill." in bacterial.text
    assert "Examples of bacteria that cause infections include Streptococcus, Staphylococcus" in (
        bacterial.text
    )
    assert bacterial.text.endswith("NIH: National Institute of Allergy and Infectious Diseases")
    assert not re.search(r"<[a-z/]|&\w+;|qt0", bacterial.text)
    tuberculosis = next(doc for doc in result.documents if doc.title == "Tuberculosis")
    assert tuberculosis.keywords == ("TB", "Infections", "Lungs and Breathing")


def test_brief_result_fields_fill_what_the_record_lacks() -> None:
    body = (FIXTURES / "wsearch-infection-0000.xml").read_bytes()
    body = re.sub(rb"<full-summary>.*?</full-summary>", b"", body, flags=re.S)
    body = re.sub(rb"<mesh-heading>.*?</mesh-heading>", b"", body, flags=re.S)

    page = parse_medlineplus_page(body, DAY)

    bacterial = next(doc for doc in page.documents if doc.title == "Bacterial Infections")
    assert "spread an infection that those antibiotics cannot cure" in bacterial.text
    assert "qt0" not in bacterial.text
    assert bacterial.mesh_terms == ("Bacterial Infections",)


def test_every_response_body_is_kept_verbatim_with_its_request(client: PacedClient) -> None:
    result = fetch_medlineplus(client, DAY, KEYWORDS, max_records=100, page_size=2)

    assert [payload.name for payload in result.payloads] == [
        "page-0001.xml",
        "page-0002.xml",
        "page-0003.xml",
        "page-0004.xml",
    ]
    assert result.payloads[1].body == (FIXTURES / "wsearch-infection-0002.xml").read_bytes()
    assert result.payloads[3].request == {
        "db": "healthTopics",
        "term": "tetanus",
        "rettype": "all",
        "retstart": "0",
        "retmax": "2",
    }


def test_a_page_answered_503_is_retried_then_read(
    server: StandInServer, client: PacedClient
) -> None:
    # Queued on both spellings of the endpoint; only the one the client uses is consumed.
    server.inject(ENDPOINT, Reply(503, b"busy", "text/plain"))
    server.inject(ENDPOINT + "/", Reply(503, b"busy", "text/plain"))

    result = fetch_medlineplus(client, DAY, KEYWORDS, max_records=100, page_size=2)

    assert result.retries == 1
    assert {document.title for document in result.documents} == TITLES_ON_DAY


def test_a_service_answering_503_throughout_raises_after_bounded_retries() -> None:
    with stand_in_server() as server:
        _serve(server, lambda request: Reply(503, b"maintenance", "text/plain"))
        with PacedClient(
            "medlineplus",
            server.base_url + ENDPOINT,
            rate_limiter=RateLimiter(1000),
            retry=FAST_RETRY,
        ) as client:
            with pytest.raises(SourceUnavailableError, match="gave up after 2 retries"):
                fetch_medlineplus(client, DAY, KEYWORDS, max_records=100)

        assert len(_search_requests(server)) == FAST_RETRY.max_retries + 1


def test_a_body_that_is_not_xml_raises_a_clear_error() -> None:
    with stand_in_server() as server:
        _serve(server, lambda request: Reply(200, b'{"error": "rate limited"}'))
        with PacedClient(
            "medlineplus",
            server.base_url + ENDPOINT,
            rate_limiter=RateLimiter(1000),
            retry=FAST_RETRY,
        ) as client:
            with pytest.raises(ValueError, match="MedlinePlus web service response is not XML"):
                fetch_medlineplus(client, DAY, KEYWORDS, max_records=100)


def test_an_xml_body_of_another_kind_raises() -> None:
    with pytest.raises(ValueError, match="root is <health-topics>, not <nlmSearchResult>"):
        parse_medlineplus_page(TOPICS_FILE.read_bytes())


def test_more_matches_than_the_cap_are_reported(client: PacedClient) -> None:
    result = fetch_medlineplus(client, DAY, KEYWORDS, max_records=1, page_size=2)

    assert len(result.documents) == 1
    assert result.cap_hit
    assert result.matched == 3


def test_medlineplus_client_paces_within_nlm_limit_and_reads_its_endpoint_from_the_environment(
    server: StandInServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLINEPLUS_URL", server.base_url + ENDPOINT)

    with medlineplus_client(retry=FAST_RETRY) as client:
        result = fetch_medlineplus(client, DAY, ["tetanus"], max_records=100)
        limiter = client.rate_limiter

    assert limiter is shared_rate_limiter("medlineplus", MEDLINEPLUS_REQUESTS_PER_MINUTE / 60)
    assert limiter.interval >= 60 / NLM_LIMIT_PER_MINUTE
    assert limiter.interval == pytest.approx(60 / 85 * PACING_MARGIN)
    assert [document.title for document in result.documents] == ["Tetanus"]


def test_the_real_health_topics_file_is_parsed() -> None:
    page = parse_health_topics(TOPICS_FILE.read_bytes())

    assert page.skipped == 0
    english, spanish = page.documents
    assert english.doc_id == "medlineplus:3061"
    assert english.title == "Abdominal Pain"
    assert english.url == "https://www.nlm.nih.gov/medlineplus/abdominalpain.html"
    assert (english.published, english.language) == ("2003-01-07", "eng")
    assert english.mesh_terms == ("Abdominal Pain",)
    assert english.keywords == ("Bellyache", "Digestive System", "Symptoms")
    assert english.text.startswith("Your abdomen extends from below your chest to your groin.")
    assert (
        "Get medical help immediately if\n"
        "- You have abdominal pain that is sudden and sharp\n"
        "- You also have pain in your chest, neck or shoulder\n"
    ) in english.text
    assert not re.search(r"<[a-z/]|&\w+;", english.text)
    assert (spanish.title, spanish.language, spanish.published) == (
        "Dolor abdominal",
        "spa",
        "2003-02-07",
    )


def test_the_topics_file_reader_keeps_topics_of_the_day_that_match_a_keyword() -> None:
    by_title = read_medlineplus_topics_file(TOPICS_FILE, date(2003, 1, 7), ["abdominal pain"], 10)
    by_also_called = read_medlineplus_topics_file(TOPICS_FILE, date(2003, 1, 7), ["Bellyache"], 10)
    other_day = read_medlineplus_topics_file(TOPICS_FILE, date(2003, 1, 8), ["abdominal"], 10)
    other_topic = read_medlineplus_topics_file(TOPICS_FILE, date(2003, 1, 7), ["asthma"], 10)

    assert [document.source_id for document in by_title.documents] == ["3061"]
    assert [document.source_id for document in by_also_called.documents] == ["3061"]
    assert other_day.documents == []
    assert other_topic.documents == []
    assert by_title.requests == 0


def test_the_topics_file_payload_reparses_to_the_same_documents() -> None:
    result = read_medlineplus_topics_file(TOPICS_FILE, date(2003, 2, 7), ["dolor"], 10)

    (payload,) = result.payloads
    assert payload.name == "health-topics.xml"
    assert payload.request == {"file": str(TOPICS_FILE)}
    assert parse_health_topics(payload.body).documents == result.documents
    assert [document.title for document in result.documents] == ["Dolor abdominal"]
