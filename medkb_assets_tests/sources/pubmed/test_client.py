"""Tests of the E-utilities client against a loopback server that answers with recorded responses.

The stand-in plays esearch and efetch with NCBI's history server semantics: each esearch opens a
session (``WebEnv``), and efetch pages through the recorded 93-article ``PubmedArticleSet`` by
``retstart``/``retmax``, cutting it between articles so every record keeps its real bytes. An
efetch on a session the stand-in no longer knows gets the expired-history error document.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from medkb_assets.sources.http import (
    RetryPolicy,
    SourceUnavailableError,
    shared_rate_limiter,
)
from medkb_assets.sources.pubmed.client import (
    DEFAULT_EUTILS_URL,
    EutilsClient,
    EutilsError,
    ResultTooLargeError,
)
from medkb_assets_tests.stand_in import Reply, SeenRequest, stand_in_server
from medkb_assets_tests.stand_in_eutils import (
    EFETCH,
    ESEARCH,
    FAST_RETRY,
    RATE_LIMIT_BODY,
    NcbiStandIn,
    RecordedArticleSet,
    article_pmids,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "eutils"
ARTICLE_SET = FIXTURES.parent / "pubmed" / "pubMR_pubmed_result_93articles.xml"


FAKE_KEY = "FAKE-NCBI-KEY-7f3a9c21d0e4b8"
EMAIL = "curator@medkb.example"
TERM = '"neoplasms"[MeSH Terms] AND "serine/metabolism"[MeSH Terms]'
DAY = dt.date(2018, 12, 8)


@pytest.fixture
def ncbi() -> Iterator[NcbiStandIn]:
    with stand_in_server() as server:
        yield NcbiStandIn(server, ARTICLE_SET.read_bytes(), api_key=FAKE_KEY, email=EMAIL)


def fetch_pmids(
    client: EutilsClient, max_records: int = 10_000, batch_size: int = 200
) -> list[str]:
    search = client.search(TERM, DAY)
    return [
        pmid
        for payload in client.fetch(search, max_records=max_records, batch_size=batch_size)
        for pmid in article_pmids(payload.body)
    ]


def test_paged_fetch_returns_every_record_once_in_batches(ncbi: NcbiStandIn) -> None:
    with ncbi.client() as client:
        search = client.search(TERM, DAY)
        payloads = list(client.fetch(search, max_records=1000, batch_size=40))

    pages = [(r.params["retstart"], r.params["retmax"]) for r in ncbi.efetches()]
    assert pages == [("0", "40"), ("40", "40"), ("80", "13")]
    assert [payload.name for payload in payloads] == [
        "efetch-0001.xml",
        "efetch-0002.xml",
        "efetch-0003.xml",
    ]
    fetched = [pmid for payload in payloads for pmid in article_pmids(payload.body)]
    assert len(fetched) == 93
    assert sorted(fetched) == sorted(article_pmids(ARTICLE_SET.read_bytes()))

    for efetch in ncbi.efetches():
        assert efetch.params["WebEnv"] == search.webenv
        assert efetch.params["query_key"] == search.query_key
        assert efetch.params["db"] == "pubmed"
        assert (efetch.params["retmode"], efetch.params["rettype"]) == ("xml", "abstract")
    assert payloads[1].request["retstart"] == "40"


def test_search_asks_for_one_entrez_day_with_history(ncbi: NcbiStandIn) -> None:
    with ncbi.client() as client:
        search = client.search(TERM, DAY)

    (esearch,) = ncbi.server.requests_to(ESEARCH)
    assert esearch.method == "GET"
    expected = {
        "db": "pubmed",
        "term": TERM,
        "retmode": "json",
        "usehistory": "y",
        "datetype": "edat",
        "mindate": "2018/12/08",
        "maxdate": "2018/12/08",
        "retmax": "0",
    }
    assert expected.items() <= esearch.params.items()
    assert search.count == 93
    assert search.webenv == f"MCID_{1:024x}"
    assert search.query_key == "1"
    assert search.request_params_without_key == search.raw.request
    assert expected.items() <= search.raw.request.items()


def test_search_reads_count_ids_and_translation_from_a_live_answer(ncbi: NcbiStandIn) -> None:
    recorded = (FIXTURES / "esearch_pubmed_medication_asthma.json").read_bytes()
    ncbi.server.route(ESEARCH, lambda request: Reply(200, recorded))

    with ncbi.client() as client:
        search = client.search("medication asthma", DAY, retmax=4)

    assert search.count == 1097404
    assert search.ids == ("30317691", "30317644", "30317624", "30317418")
    assert search.query_translation.startswith('("pharmaceutical preparations"[MeSH Terms]')
    assert search.warnings == ()
    assert search.raw.body == recorded
    assert search.raw.name == "esearch.json"


def test_error_in_esearch_answer_raises_with_ncbi_message(ncbi: NcbiStandIn) -> None:
    recorded = (FIXTURES / "esearch.baderror.json").read_bytes()
    ncbi.server.route(ESEARCH, lambda request: Reply(200, recorded))

    with ncbi.client() as client, pytest.raises(EutilsError) as raised:
        client.search(TERM, DAY)

    assert "Invalid db name specified: fleegle" in str(raised.value)
    assert "esearch.fcgi" in str(raised.value)


def test_phrase_not_found_with_hits_is_kept_as_a_warning(ncbi: NcbiStandIn) -> None:
    recorded = (FIXTURES / "esearch.error.json").read_bytes()
    ncbi.server.route(ESEARCH, lambda request: Reply(200, recorded))

    with ncbi.client() as client:
        search = client.search("obstetrics[MeSH Terms] OR fleegle[MeSH Terms]", DAY)

    assert search.count == 5163
    assert search.warnings == ("phrasesnotfound: fleegle[MeSH Terms]",)


def test_phrase_not_found_with_zero_count_is_zero_hits(ncbi: NcbiStandIn) -> None:
    # The recorded phrase-not-found answer, for a day on which nothing matched.
    answer = json.loads((FIXTURES / "esearch.error.json").read_bytes())
    answer["esearchresult"].update(count="0", idlist=[])
    ncbi.server.route(ESEARCH, lambda request: Reply(200, json.dumps(answer).encode()))

    with ncbi.client() as client:
        search = client.search("fleegle[MeSH Terms]", DAY)
        payloads = list(client.fetch(search, max_records=100))

    assert search.count == 0
    assert payloads == []
    assert ncbi.efetches() == []


def test_rate_limited_response_is_retried_after_backoff(ncbi: NcbiStandIn) -> None:
    waits: list[float] = []
    ncbi.server.inject(EFETCH, Reply(429, RATE_LIMIT_BODY))

    with ncbi.client(sleep=waits.append) as client:
        fetched = fetch_pmids(client, batch_size=50)
        stats = client.stats

    assert len(fetched) == 93
    assert len(waits) == 1 and 0 <= waits[0] <= FAST_RETRY.base_delay
    assert stats.retries == 1
    assert stats.failures_by_kind == {"429": 1}
    assert [r.params["retstart"] for r in ncbi.efetches()] == ["0", "0", "50"]


def test_rate_limit_answered_with_status_200_is_retried(ncbi: NcbiStandIn) -> None:
    waits: list[float] = []
    ncbi.server.inject(ESEARCH, Reply(200, RATE_LIMIT_BODY))

    with ncbi.client(sleep=waits.append) as client:
        search = client.search(TERM, DAY)
        stats = client.stats

    assert search.count == 93
    assert len(ncbi.server.requests_to(ESEARCH)) == 2
    assert len(waits) == 1
    assert stats.retries == 1
    assert stats.failures_by_kind == {"refused (HTTP 200)": 1}


def test_server_errors_are_retried(ncbi: NcbiStandIn) -> None:
    ncbi.server.inject(EFETCH, Reply(503, b"Service Unavailable", "text/plain"), Reply(502))

    with ncbi.client() as client:
        fetched = fetch_pmids(client)
        stats = client.stats

    assert len(fetched) == 93
    assert stats.failures_by_kind == {"503": 1, "502": 1}
    assert len(ncbi.efetches()) == 3


def test_response_slower_than_the_timeout_is_retried(ncbi: NcbiStandIn) -> None:
    ncbi.server.inject(ESEARCH, Reply(200, b"{}", delay=1.0))

    with ncbi.client(timeout=0.3) as client:
        search = client.search(TERM, DAY)
        stats = client.stats

    assert search.count == 93
    assert stats.failures_by_kind == {"ReadTimeout": 1}
    assert len(ncbi.server.requests_to(ESEARCH)) == 2


def test_dropped_connection_is_retried(ncbi: NcbiStandIn) -> None:
    ncbi.server.inject(EFETCH, Reply(drop=True))

    with ncbi.client() as client:
        fetched = fetch_pmids(client)
        stats = client.stats

    assert len(fetched) == 93
    assert stats.failures_by_kind == {"RemoteProtocolError": 1}
    assert len(ncbi.efetches()) == 2


def test_persistent_failure_gives_up_after_bounded_attempts(ncbi: NcbiStandIn) -> None:
    ncbi.server.inject(ESEARCH, *[Reply(503, b"Service Unavailable", "text/plain")] * 10)
    retry = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02)

    with ncbi.client(retry=retry) as client, pytest.raises(SourceUnavailableError) as raised:
        client.search(TERM, DAY)

    assert str(raised.value).startswith("ncbi esearch.fcgi")
    assert "gave up after 2 retries" in str(raised.value)
    assert len(ncbi.server.requests_to(ESEARCH)) == 3


def test_persistent_rate_limit_answers_give_up(ncbi: NcbiStandIn) -> None:
    ncbi.server.inject(ESEARCH, *[Reply(200, RATE_LIMIT_BODY)] * 10)
    retry = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02)

    with ncbi.client(retry=retry) as client, pytest.raises(SourceUnavailableError) as raised:
        client.search(TERM, DAY)

    assert "ncbi esearch.fcgi" in str(raised.value)
    assert "API rate limit exceeded" in str(raised.value)
    assert len(ncbi.server.requests_to(ESEARCH)) == 3


def test_requests_from_several_threads_share_the_ncbi_rate_limit(ncbi: NcbiStandIn) -> None:
    def search_twice() -> None:
        with ncbi.client(api_key=None) as client:
            client.search(TERM, DAY)
            client.search(TERM, DAY)

    threads = [threading.Thread(target=search_twice) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    arrivals = sorted(request.at for request in ncbi.server.requests_to(ESEARCH))
    assert len(arrivals) == 6
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    # A few milliseconds of loopback jitter between the client's slot and the server's clock.
    assert min(gaps) >= 1 / 3 - 0.02, gaps


def test_rate_is_three_per_second_without_key_and_ten_with_one(ncbi: NcbiStandIn) -> None:
    with ncbi.client(api_key=None) as anonymous, ncbi.client() as keyed:
        assert anonymous.rate == 3
        assert keyed.rate == 10
        assert anonymous.rate_limiter is shared_rate_limiter("ncbi", 3)
        assert keyed.rate_limiter is shared_rate_limiter("ncbi", 10)


def test_tool_and_email_are_sent_with_every_request(ncbi: NcbiStandIn) -> None:
    ncbi.server.inject(EFETCH, Reply(500))

    with ncbi.client(api_key=None) as client:
        fetch_pmids(client, batch_size=50)

    seen = ncbi.server.seen
    assert len(seen) == 4
    assert all(request.params.get("tool") == "medkb" for request in seen)
    assert all(request.params.get("email") == EMAIL for request in seen)
    assert all("api_key" not in request.params for request in seen)


def test_api_key_reaches_ncbi_but_no_log_error_or_payload(
    ncbi: NcbiStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NCBI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("NCBI_EUTILS_URL", ncbi.base_url)
    monkeypatch.setenv("NCBI_EMAIL", EMAIL)
    caplog.set_level(logging.DEBUG)
    # NCBI's rate-limit answer names the caller in its "api-key" field: the key, when one is sent.
    echoed = json.loads(RATE_LIMIT_BODY)
    echoed["api-key"] = FAKE_KEY
    echo = json.dumps(echoed).encode()
    ncbi.server.inject(ESEARCH, Reply(429, echo))
    ncbi.server.inject(EFETCH, Reply(200, echo))

    with EutilsClient.from_env(retry=FAST_RETRY) as client:
        search = client.search(TERM, DAY)
        payloads = list(client.fetch(search, max_records=100, batch_size=50))
        shown = repr(client)
    ncbi.server.inject(ESEARCH, *[Reply(503, echo)] * 10)
    with EutilsClient.from_env(retry=FAST_RETRY) as client, pytest.raises(SourceUnavailableError):
        client.search(TERM, DAY)
    failure = ncbi.server.seen[-1]

    assert all(request.params.get("api_key") == FAKE_KEY for request in ncbi.server.seen)
    assert failure.params["api_key"] == FAKE_KEY
    assert "api_key=***" in caplog.text
    assert FAKE_KEY not in caplog.text
    assert FAKE_KEY not in shown
    assert FAKE_KEY not in str(search.request_params_without_key)
    assert all("api_key" not in payload.request for payload in [search.raw, *payloads])
    assert all(FAKE_KEY not in str(payload.request) for payload in [search.raw, *payloads])


def test_api_key_is_hidden_in_error_messages(ncbi: NcbiStandIn) -> None:
    echoed = json.loads(RATE_LIMIT_BODY)
    echoed["api-key"] = FAKE_KEY
    attempts = FAST_RETRY.max_retries + 1
    ncbi.server.inject(ESEARCH, *[Reply(503, json.dumps(echoed).encode())] * attempts)
    bad_answer = {"error": "API key invalid", "api-key": FAKE_KEY}
    ncbi.server.inject(EFETCH, Reply(400, json.dumps(bad_answer).encode()))

    with ncbi.client() as client, pytest.raises(SourceUnavailableError) as exhausted:
        client.search(TERM, DAY)
    ncbi.server.seen.clear()
    with ncbi.client() as client, pytest.raises(SourceUnavailableError) as refused:
        list(client.fetch(client.search(TERM, DAY), max_records=10))

    assert "HTTP 503" in str(exhausted.value)
    assert "HTTP 400" in str(refused.value)
    assert "api_key=***" in str(refused.value)
    for error in (exhausted.value, refused.value):
        assert FAKE_KEY not in str(error)
        assert FAKE_KEY not in repr(error.args)


def test_eutils_url_from_environment_is_honoured(
    ncbi: NcbiStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NCBI_EUTILS_URL", ncbi.base_url.rstrip("/"))
    monkeypatch.delenv("NCBI_API_KEY", raising=False)

    with EutilsClient.from_env(retry=FAST_RETRY) as client:
        search = client.search(TERM, DAY)

    assert search.count == 93
    assert [request.path for request in ncbi.server.seen] == [ESEARCH]

    monkeypatch.delenv("NCBI_EUTILS_URL")
    with EutilsClient.from_env() as default:
        assert (
            default.base_url
            == DEFAULT_EUTILS_URL
            == ("https://eutils.ncbi.nlm.nih.gov/entrez/eutils/")
        )


def test_cap_smaller_than_count_fetches_exactly_the_cap(ncbi: NcbiStandIn) -> None:
    with ncbi.client() as client:
        search = client.search(TERM, DAY)
        fetched = [
            pmid
            for payload in client.fetch(search, max_records=50, batch_size=40)
            for pmid in article_pmids(payload.body)
        ]

    plan = search.plan(50)
    assert fetched == article_pmids(ARTICLE_SET.read_bytes())[:50]
    assert [(r.params["retstart"], r.params["retmax"]) for r in ncbi.efetches()] == [
        ("0", "40"),
        ("40", "10"),
    ]
    assert plan.cap_hit and plan.to_fetch == 50
    assert plan.describe(len(fetched)) == "cap of 50 reached: 50 of 93 records fetched"
    assert not search.plan(93).cap_hit
    assert search.plan(100).describe(93) == "93 of 93 records fetched"


def test_expired_history_session_is_searched_again_once(ncbi: NcbiStandIn) -> None:
    fetched: list[str] = []

    with ncbi.client() as client:
        search = client.search(TERM, DAY)
        for payload in client.fetch(search, max_records=1000, batch_size=40):
            fetched.extend(article_pmids(payload.body))
            if len(fetched) == 40:
                ncbi.expire_sessions()
        stats = client.stats

    assert sorted(fetched) == sorted(article_pmids(ARTICLE_SET.read_bytes()))
    assert len(ncbi.server.requests_to(ESEARCH)) == 2
    efetches = ncbi.efetches()
    assert [r.params["retstart"] for r in efetches] == ["0", "40", "40", "80"]
    assert efetches[1].params["WebEnv"] == search.webenv
    assert efetches[2].params["WebEnv"] == efetches[3].params["WebEnv"] != search.webenv
    assert stats.failures_by_kind == {"expired history": 1}


def test_history_session_expiring_twice_raises(ncbi: NcbiStandIn) -> None:
    ncbi.always_expired = True

    with ncbi.client() as client, pytest.raises(EutilsError) as raised:
        fetch_pmids(client)

    assert "Unable to obtain query #1" in str(raised.value)
    assert len(ncbi.server.requests_to(ESEARCH)) == 2
    assert len(ncbi.efetches()) == 2


def test_batch_with_fewer_records_than_asked_does_not_stall(ncbi: NcbiStandIn) -> None:
    ncbi.withheld = frozenset(range(40, 80))

    with ncbi.client() as client:
        fetched = fetch_pmids(client, batch_size=40)

    expected = article_pmids(ARTICLE_SET.read_bytes())
    assert fetched == expected[:40] + expected[80:]
    assert [r.params["retstart"] for r in ncbi.efetches()] == ["0", "40", "80"]


def test_more_records_than_history_serves_are_refused_before_fetching(
    ncbi: NcbiStandIn,
) -> None:
    ncbi.count = 12_000

    with ncbi.client() as client:
        search = client.search(TERM, DAY)
        with pytest.raises(ResultTooLargeError) as raised:
            next(client.fetch(search, max_records=20_000))

    assert "12,000" in str(raised.value)
    assert "9,999" in str(raised.value)
    assert "pubmed.files" in str(raised.value)
    assert ncbi.efetches() == []


def test_batch_size_above_ncbi_page_limit_is_refused(ncbi: NcbiStandIn) -> None:
    with ncbi.client() as client:
        search = client.search(TERM, DAY)
        with pytest.raises(ValueError, match="batch_size"):
            next(client.fetch(search, max_records=100, batch_size=201))


def test_backoff_grows_exponentially_with_jitter() -> None:
    policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=10.0)

    for attempt in range(4):
        delays = [policy.delay(attempt) for _ in range(300)]
        ceiling = 2**attempt
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > 0.8 * ceiling
        assert len(set(delays)) > 250
    assert max(policy.delay(8) for _ in range(300)) <= 10.0


def test_search_without_history_session_is_fetched_by_pmid_list() -> None:
    article_set = RecordedArticleSet(ARTICLE_SET.read_bytes())
    pmids = [
        article_pmids(article_set.header + a + article_set.footer)[0] for a in article_set.articles
    ]

    def esearch(request: SeenRequest) -> Reply:
        listed = pmids[: int(request.params.get("retmax", "0"))]
        answer = {"esearchresult": {"count": str(len(pmids)), "idlist": listed}}
        return Reply(200, json.dumps(answer).encode())

    def efetch(request: SeenRequest) -> Reply:
        wanted = request.params["id"].split(",")
        chosen = [article_set.articles[pmids.index(pmid)] for pmid in wanted]
        body = article_set.header + b"\n".join(chosen) + article_set.footer
        return Reply(200, body, "text/xml")

    with stand_in_server() as server:
        server.route(ESEARCH, esearch)
        server.route(EFETCH, efetch)
        client = EutilsClient(base_url=server.base_url + "/entrez/eutils/", retry=FAST_RETRY)
        search = client.search(TERM, DAY)
        fetched = [
            pmid
            for payload in client.fetch(search, max_records=50, batch_size=20)
            for pmid in article_pmids(payload.body)
        ]
        efetches = server.requests_to(EFETCH)

    assert search.webenv is None
    assert fetched == pmids[:50]
    assert [len(request.params["id"].split(",")) for request in efetches] == [20, 20, 10]
