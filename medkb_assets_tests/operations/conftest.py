"""A loopback webhook receiver, and real PubMed partitions built through the real stages."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from medkb_assets.documents.build import build_partition_documents, write_documents
from medkb_assets.sources.base import RawPayload
from medkb_assets.sources.raw_store import write_fetch
from medkb_assets.storage import DataLayout, PartitionRef

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
    """A real HTTP server on loopback that records every JSON body POSTed to it."""

    base_url: str = ""
    received: list[ReceivedAlert] = field(default_factory=list)
    statuses: deque[int] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def answer_next(self, *statuses: int) -> None:
        """Answers the next POSTs with ``statuses`` in order, then 200 again."""
        with self.lock:
            self.statuses.extend(statuses)

    def _record(self, alert: ReceivedAlert) -> int:
        with self.lock:
            self.received.append(alert)
            return self.statuses.popleft() if self.statuses else 200


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            status = receiver._record(
                ReceivedAlert(self.path, self.headers.get("Content-Type", ""), json.loads(raw))
            )
            body = b'{"ok":true}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


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
