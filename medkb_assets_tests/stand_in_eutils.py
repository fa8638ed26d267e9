"""A stand-in for NCBI E-utilities (esearch and efetch with history) answering from recordings.

Each esearch opens a session (``WebEnv``) holding the matching records, and efetch pages through
it by ``retstart``/``retmax``. The records are a real ``PubmedArticleSet`` cut between its
articles, so every record keeps its real bytes. With ``by_entrez_day`` a search holds only the
records whose Entrez date is the searched day, the way ``datetype=edat`` restricts a real one.
An efetch on a session the stand-in no longer knows gets the expired-history error document.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import defusedxml.ElementTree

from medkb_assets.sources.http import RetryPolicy
from medkb_assets.sources.pubmed.client import EutilsClient
from medkb_assets.sources.pubmed.parser import parse_pubmed_xml
from medkb_assets_tests.stand_in import Reply, SeenRequest, StandInServer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eutils"
EXPIRED_HISTORY_BODY = (FIXTURES / "efetch_expired_history.xml").read_bytes()
RATE_LIMIT_BODY = (FIXTURES / "rate_limit_429.json").read_bytes()

EUTILS_PATH = "/entrez/eutils"
ESEARCH = f"{EUTILS_PATH}/esearch.fcgi"
EFETCH = f"{EUTILS_PATH}/efetch.fcgi"
FAST_RETRY = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)


def article_pmids(xml: bytes) -> list[str]:
    root = defusedxml.ElementTree.fromstring(xml)
    return [str(pmid.text) for pmid in root.findall("./PubmedArticle/MedlineCitation/PMID")]


class RecordedArticleSet:
    """A real ``PubmedArticleSet`` cut between its articles, to serve slices of it."""

    def __init__(self, xml: bytes) -> None:
        starts = [match.start() for match in re.finditer(rb"<PubmedArticle>", xml)]
        ends = [match.end() for match in re.finditer(rb"</PubmedArticle>", xml)]
        self.header = xml[: starts[0]]
        self.footer = xml[ends[-1] :]
        self.articles = [xml[start:end] for start, end in zip(starts, ends, strict=True)]
        self.entrez_dates = [
            parse_pubmed_xml(self.header + article + self.footer).records[0].entrez_date
            for article in self.articles
        ]

    def page(
        self, positions: list[int], retstart: int, retmax: int, withheld: frozenset[int]
    ) -> bytes:
        chosen = [
            self.articles[i] for i in positions[retstart : retstart + retmax] if i not in withheld
        ]
        return self.header + b"\n".join(chosen) + self.footer


class NcbiStandIn:
    """esearch and efetch with history sessions over a recorded article set."""

    def __init__(
        self,
        server: StandInServer,
        article_set_xml: bytes,
        *,
        api_key: str | None = None,
        email: str | None = None,
        by_entrez_day: bool = False,
    ) -> None:
        self.server = server
        self.article_set = RecordedArticleSet(article_set_xml)
        self.esearch_template = json.loads((FIXTURES / "esearch.pubmed.json").read_bytes())
        self.api_key = api_key
        self.email = email
        self.by_entrez_day = by_entrez_day
        self.count = len(self.article_set.articles)
        self.withheld: frozenset[int] = frozenset()
        self.sessions: dict[str, list[int]] = {}
        self.searches = 0
        self.always_expired = False
        server.route(ESEARCH, self._esearch)
        server.route(EFETCH, self._efetch)

    @property
    def base_url(self) -> str:
        return f"{self.server.base_url}{EUTILS_PATH}/"

    def client(self, **options: Any) -> EutilsClient:
        settings: dict[str, Any] = {
            "base_url": self.base_url,
            "api_key": self.api_key,
            "email": self.email,
            "retry": FAST_RETRY,
            "timeout": 5.0,
            **options,
        }
        return EutilsClient(**settings)

    def expire_sessions(self) -> None:
        self.sessions.clear()

    def efetches(self) -> list[SeenRequest]:
        return self.server.requests_to(EFETCH)

    def _matching(self, params: dict[str, str]) -> list[int]:
        positions = list(range(len(self.article_set.articles)))
        if not self.by_entrez_day:
            return positions[: self.count]
        day = params["mindate"].replace("/", "-")
        return [i for i in positions if self.article_set.entrez_dates[i] == day]

    def _esearch(self, request: SeenRequest) -> Reply:
        # The recorded answer to a history search, with the size of the matching records.
        answer = json.loads(json.dumps(self.esearch_template))
        self.searches += 1
        webenv = f"MCID_{self.searches:024x}"
        matching = self._matching(request.params)
        self.sessions[webenv] = matching
        count = len(matching) if self.by_entrez_day else self.count
        answer["esearchresult"].update(
            count=str(count), retmax="0", idlist=[], webenv=webenv, querykey="1"
        )
        return Reply(200, json.dumps(answer, indent=4).encode())

    def _efetch(self, request: SeenRequest) -> Reply:
        params = request.params
        positions = self.sessions.get(params.get("WebEnv", ""))
        if self.always_expired or positions is None or params.get("query_key") != "1":
            return Reply(200, EXPIRED_HISTORY_BODY, "text/xml; charset=UTF-8")
        page = self.article_set.page(
            positions, int(params["retstart"]), int(params["retmax"]), self.withheld
        )
        return Reply(200, page, "text/xml; charset=UTF-8")
