"""A loopback webhook receiver, and real PubMed partitions built through the real stages."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from medkb_assets.documents.build import build_partition_documents, write_documents
from medkb_assets.sources.base import RawPayload
from medkb_assets.sources.raw_store import write_fetch
from medkb_assets.storage import DataLayout, PartitionRef
from medkb_assets_tests.stand_in import Reply, SeenRequest, StandInServer, stand_in_server

FIXTURES = Path(__file__).parents[1] / "fixtures"
ASTHMA_TRIAL_XML = FIXTURES / "pubmed" / "pubmed-29768149.xml"
ASTHMA_TRIAL_PMID = "29768149"
NINETY_THREE_ARTICLES_XML = FIXTURES / "pubmed" / "pubMR_pubmed_result_93articles.xml"


@dataclass
class ReceivedAlert:
    path: str
    content_type: str
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """A stand-in server on loopback that records every JSON body POSTed to it."""

    server: StandInServer
    statuses: deque[int] = field(default_factory=deque)

    def url(self, path: str) -> str:
        """The webhook URL for ``path``; POSTs there are recorded and answered."""
        self.server.route(path, self._answer)
        return f"{self.base_url}{path}"

    def answer_next(self, *statuses: int) -> None:
        """Answers the next POSTs with ``statuses`` in order, then 200 again."""
        with self.server.lock:
            self.statuses.extend(statuses)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def received(self) -> list[ReceivedAlert]:
        return [
            ReceivedAlert(request.path, request.content_type, json.loads(request.body))
            for request in self.server.seen
            if request.method == "POST"
        ]

    def _answer(self, request: SeenRequest) -> Reply:
        with self.server.lock:
            status = self.statuses.popleft() if self.statuses else 200
        return Reply(status, b'{"ok":true}')


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with stand_in_server() as server:
        yield WebhookReceiver(server)


def pubmed_articles(path: Path, count: int) -> bytes:
    """Returns a PubmedArticleSet holding the first ``count`` articles of a real efetch file."""
    text = path.read_text(encoding="utf-8")
    articles = re.findall(r"<PubmedArticle>.*?</PubmedArticle>", text, flags=re.DOTALL)
    body = "\n".join(articles[:count])
    return f'<?xml version="1.0" ?>\n<PubmedArticleSet>\n{body}\n</PubmedArticleSet>\n'.encode()


def fetch_pubmed_partition(
    layout: DataLayout,
    partition: PartitionRef,
    efetch_xml: bytes,
    fetched_at: dt.datetime,
    pmids: list[str],
    query: str,
) -> Path:
    """Stores a PubMed fetch as the raw stage does and rebuilds the partition's documents.

    Returns:
        The partition's documents file.
    """
    request = {"db": "pubmed", "id": ",".join(pmids), "retmode": "xml", "rettype": "abstract"}
    write_fetch(
        layout,
        "pubmed",
        partition,
        [RawPayload(name="efetch.xml", body=efetch_xml, request=request)],
        {
            "mode": "eutils",
            "query": query,
            "request": {"db": "pubmed", "term": query, "datetype": "edat"},
            "hits": len(pmids),
            "records_fetched": len(pmids),
        },
        fetched_at,
    )
    built = build_partition_documents(layout, partition, ["pubmed"])
    write_documents(layout, partition, built.frame)
    return layout.documents_path(partition)
