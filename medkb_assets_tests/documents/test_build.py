from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq

from medkb_assets.documents.build import build_partition_documents, write_documents
from medkb_assets.documents.cleaning import clean_text, content_hash
from medkb_assets.documents.schema import DOCUMENT_SCHEMA
from medkb_assets.sources.base import RawPayload, SourceDocument
from medkb_assets.sources.pubmed.parser import parse_pubmed_xml
from medkb_assets.sources.raw_store import write_fetch
from medkb_assets.storage import DataLayout, PartitionRef

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pubmed"
PARTITION = PartitionRef(date="2017-08-09", topic="infectious_outbreaks")
FETCHED_AT = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)


def _pubmed_fetch(layout: DataLayout, *bodies: bytes) -> None:
    payloads = [
        RawPayload(name=f"efetch-{number}.xml", body=body, request={"retstart": str(number)})
        for number, body in enumerate(bodies)
    ]
    write_fetch(layout, "pubmed", PARTITION, payloads, {"status": "ok"}, FETCHED_AT)


def test_each_record_with_an_abstract_becomes_one_clean_document(tmp_path):
    layout = DataLayout(tmp_path)
    ninety_three = (FIXTURES / "pubMR_pubmed_result_93articles.xml").read_bytes()
    _pubmed_fetch(layout, ninety_three, ninety_three)  # the same page served twice

    built = build_partition_documents(layout, PARTITION, ["pubmed"])

    expected = {r.pmid: r for r in parse_pubmed_xml(ninety_three).records if r.abstract}
    frame = built.frame
    assert len(expected) == 92
    assert sorted(frame["source_id"]) == sorted(expected)
    assert frame["doc_id"].is_unique
    some_pmid = sorted(expected)[0]
    row = frame.set_index("source_id").loc[some_pmid]
    assert row["title"] == clean_text(expected[some_pmid].title)
    assert row["text"] == clean_text(expected[some_pmid].abstract)
    assert row["content_hash"] == content_hash(row["title"], row["text"])
    assert list(row["topics"]) == ["infectious_outbreaks"]
    assert row["url"] == f"https://pubmed.ncbi.nlm.nih.gov/{some_pmid}/"
    assert built.outcomes[0].without_text == 2  # 28328320 has no abstract, seen on both pages


def test_a_deleted_citation_becomes_a_flagged_tombstone(tmp_path):
    layout = DataLayout(tmp_path)
    # A DeleteCitation block as NLM's update files carry it, naming a real PMID of the fixtures.
    deletion = (
        b'<?xml version="1.0"?>\n<PubmedArticleSet><DeleteCitation>'
        b'<PMID Version="1">28786991</PMID></DeleteCitation></PubmedArticleSet>'
    )
    _pubmed_fetch(layout, deletion)

    frame = build_partition_documents(layout, PARTITION, ["pubmed"]).frame

    assert frame["doc_id"].tolist() == ["pubmed:28786991"]
    assert frame["deleted"].tolist() == [True]


def test_public_health_items_join_pubmed_with_stable_ids(tmp_path):
    layout = DataLayout(tmp_path)
    _pubmed_fetch(layout, (FIXTURES / "pubmed-29768149.xml").read_bytes())
    item = SourceDocument(
        source="who",
        source_id="2017-DON-0042",
        title="  Cholera \u2013 Yemen ",
        text="Overview:\n\nCases   continue to rise.",
        url="https://www.who.int/emergencies/disease-outbreak-news/item/cholera-yemen",
        published="2017-08-09",
    )
    write_fetch(
        layout,
        "who",
        PARTITION,
        [],
        {"status": "ok"},
        FETCHED_AT,
        items=[item.__dict__ | {"keywords": []}],
    )

    frame = build_partition_documents(layout, PARTITION, ["pubmed", "who"]).frame

    who_row = frame.set_index("doc_id").loc["who:2017-DON-0042"]
    assert who_row["title"] == "Cholera \u2013 Yemen"
    assert who_row["text"] == "Overview:\n\nCases continue to rise."
    assert set(frame["source"]) == {"pubmed", "who"}


def test_a_source_that_was_down_is_named_and_the_others_still_build(tmp_path):
    layout = DataLayout(tmp_path)
    _pubmed_fetch(layout, (FIXTURES / "pubmed-29768149.xml").read_bytes())
    write_fetch(
        layout, "cdc", PARTITION, [], {"status": "unavailable", "error": "HTTP 503"}, FETCHED_AT
    )

    built = build_partition_documents(layout, PARTITION, ["pubmed", "cdc", "medlineplus"])

    assert built.frame["doc_id"].tolist() == ["pubmed:29768149"]
    assert built.missing_sources == ["cdc", "medlineplus"]


def test_documents_file_follows_the_shared_schema(tmp_path):
    layout = DataLayout(tmp_path)
    _pubmed_fetch(layout, (FIXTURES / "pubmed-29768149.xml").read_bytes())
    built = build_partition_documents(layout, PARTITION, ["pubmed"])

    write_documents(layout, PARTITION, built.frame)

    table = pq.read_table(layout.documents_path(PARTITION))
    assert table.schema.equals(DOCUMENT_SCHEMA, check_metadata=False)
    assert table.num_rows == 1


def test_clean_text_normalises_spacing_and_unicode_but_keeps_paragraphs():
    messy = "A\u00a0 b\t\tc\r\n\r\n\r\nCafe\u0301 \u0007end  "

    assert clean_text(messy) == "A b c\n\nCaf\u00e9 end"


def test_an_outage_on_a_rerun_keeps_the_documents_of_the_last_good_fetch(tmp_path):
    layout = DataLayout(tmp_path)
    item = SourceDocument(
        source="who",
        source_id="2017-DON-0042",
        title="Cholera - Yemen",
        text="Cases continue to rise.",
        url="https://www.who.int/emergencies/disease-outbreak-news/item/cholera-yemen",
        published="2017-08-09",
    )
    write_fetch(layout, "who", PARTITION, [], {"status": "ok"}, FETCHED_AT, items=[item.__dict__])
    later = FETCHED_AT + dt.timedelta(days=1)
    write_fetch(layout, "who", PARTITION, [], {"status": "unavailable", "error": "HTTP 503"}, later)

    built = build_partition_documents(layout, PARTITION, ["who"])

    assert built.frame["doc_id"].tolist() == ["who:2017-DON-0042"]
    assert built.missing_sources == ["who"]
    outcome = built.outcomes[0]
    assert (outcome.fetched_at, outcome.failed_at) == (FETCHED_AT.isoformat(), later.isoformat())
    assert outcome.error == "HTTP 503"


def test_a_retraction_notice_flags_the_paper_it_retracts(tmp_path):
    layout = DataLayout(tmp_path)
    paper = (FIXTURES / "pubmed-29768149.xml").read_bytes()
    # A retraction notice built from the real record: the same bytes with a new PMID, a
    # "Retraction of Publication" type and a RetractionOf link back to 29768149.
    notice = (
        paper.replace(b'<PMID Version="1">29768149</PMID>', b'<PMID Version="1">39999999</PMID>', 1)
        .replace(
            b"</PublicationTypeList>",
            b'<PublicationType UI="D016440">Retraction of Publication</PublicationType>'
            b"</PublicationTypeList>",
            1,
        )
        .replace(
            b"</MedlineCitation>",
            b'<CommentsCorrectionsList><CommentsCorrections RefType="RetractionOf">'
            b'<RefSource>N Engl J Med. 2018</RefSource><PMID Version="1">29768149</PMID>'
            b"</CommentsCorrections></CommentsCorrectionsList></MedlineCitation>",
            1,
        )
    )
    _pubmed_fetch(layout, paper, notice)

    frame = build_partition_documents(layout, PARTITION, ["pubmed"]).frame.set_index("doc_id")

    assert frame.loc["pubmed:29768149", "retracted"]
    assert not frame.loc["pubmed:29768149", "deleted"]
    assert not frame.loc["pubmed:39999999", "retracted"]
