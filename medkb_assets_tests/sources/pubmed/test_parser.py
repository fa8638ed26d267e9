"""Tests for the PubMed XML parser, run against real E-utilities responses and NLM files."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import re
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medkb_assets.sources.pubmed.parser import (
    DeletedCitation,
    MalformedXmlError,
    PubmedRecord,
    SkippedRecord,
    UnsafeXmlError,
    iter_pubmed_xml,
    parse_pubmed_file,
    parse_pubmed_xml,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "pubmed"

# Real files in the fixture folder that are not PubmedArticleSet XML, and why.
NOT_XML = {
    "biopython/efetch2.txt": "MEDLINE text format (rettype=medline), not XML",
    "biopython/medline_pubmed_result1.txt": "MEDLINE text format, not XML",
    "biopython/medline_pubmed_result2.txt": "MEDLINE text format, not XML",
    "biopython/medline_pubmed_result3.txt": "MEDLINE text format, not XML",
    "esearch_json_doc/esearch_pubmed_medication_asthma.json": "esearch retmode=json, not XML",
    "eutils_samples/einfo.error.json": "einfo error as JSON, not XML",
    "eutils_samples/esearch.baderror.json": "esearch error as JSON, not XML",
    "eutils_samples/esearch.error.json": "esearch error as JSON, not XML",
    "eutils_samples/esearch.pubmed.json": "esearch retmode=json, not XML",
    "eutils_samples/esummary.error.json": "esummary error as JSON, not XML",
    "eutils_samples/esummary.pubmed.json": "esummary retmode=json, not XML",
}
# Real XML responses of other E-utilities or databases, with their root element.
OTHER_XML = {
    "biopython/efetch_pmc.xml": "pmc-articleset",
    "biopython/einfo1.xml": "eInfoResult",
    "biopython/einfo2.xml": "eInfoResult",
    "biopython/elink1.xml": "eLinkResult",
    "biopython/epost1.xml": "ePostResult",
    "biopython/epost2.xml": "ePostResult",
    "biopython/epost3.xml": "ePostResult",
    "biopython/esearch1.xml": "eSearchResult",
    "biopython/esearch2.xml": "eSearchResult",
    "biopython/esearch3.xml": "eSearchResult",
    "biopython/esearch5.xml": "eSearchResult",
    "biopython/esearch8.xml": "eSearchResult",
    "biopython/esearch9.xml": "eSearchResult",
    "biopython/espell.xml": "eSpellResult",
    "biopython/esummary1.xml": "eSummaryResult",
    "biopython/esummary8.xml": "eSummaryResult",
    "eutils_samples/einfo.error.xml": "eInfoResult",
    "eutils_samples/esearch.baderror.xml": "eSearchResult",
    "eutils_samples/esearch.error.xml": "eSearchResult",
    "eutils_samples/esearch.pubmed.xml": "eSearchResult",
    "eutils_samples/esummary.error.xml": "eSummaryResult",
    "eutils_samples/esummary.pubmed.xml": "eSummaryResult",
}
ALL_FILES = sorted(
    path.relative_to(FIXTURES).as_posix()
    for path in FIXTURES.rglob("*")
    if path.is_file() and path.name != "SOURCES.tsv"
)
ARTICLE_SET_FILES = [name for name in ALL_FILES if name not in NOT_XML and name not in OTHER_XML]

# Independent of the parser: the PMID that opens each citation or book document.
RECORD_PMID = re.compile(
    rb"<(?:MedlineCitation|BookDocument)\b[^>]*>\s*<PMID Version=\"\d+\">(\d+)<"
)
LEFTOVER_MARKUP = re.compile(r"</?(?:i|b|u|sup|sub|mml:\w+|math)\b[^>]*>")


def read_fixture(name: str) -> bytes:
    raw = (FIXTURES / name).read_bytes()
    return gzip.decompress(raw) if name.endswith(".gz") else raw


def records_by_pmid(name: str) -> dict[str, PubmedRecord]:
    return {record.pmid: record for record in parse_pubmed_file(FIXTURES / name).records}


def replace_once(payload: bytes, old: bytes, new: bytes) -> bytes:
    assert payload.count(old) == 1, old
    return payload.replace(old, new)


class AuditLog:
    """Records file opens and network calls the interpreter makes while recording is on."""

    watched = frozenset({"open", "socket.connect", "socket.getaddrinfo", "urllib.Request"})

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] | None = None

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.events is not None and event in self.watched:
            self.events.append((event, repr(args[:2])))


_AUDIT = AuditLog()
sys.addaudithook(_AUDIT)


@pytest.fixture
def audit_events() -> Iterator[list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    _AUDIT.events = events
    try:
        yield events
    finally:
        _AUDIT.events = None


def test_every_fixture_file_is_classified_and_has_its_origin_recorded() -> None:
    origins = (FIXTURES / "SOURCES.tsv").read_text(encoding="utf-8").splitlines()
    recorded = {line.split("\t", 1)[0] for line in origins[1:]}

    assert recorded == set(ALL_FILES)
    assert set(NOT_XML) | set(OTHER_XML) <= set(ALL_FILES)
    for name in ARTICLE_SET_FILES:
        assert b"<PubmedArticleSet>" in read_fixture(name), name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.skip(reason=NOT_XML[name]))
        if name in NOT_XML
        else name
        for name in ALL_FILES
        if name not in OTHER_XML
    ],
)
def test_real_article_set_parses_every_record_completely(name: str) -> None:
    result = parse_pubmed_file(FIXTURES / name)

    assert result.skipped == 0 and result.skip_reasons == []
    assert result.deleted_pmids == []
    expected_pmids = [pmid.decode() for pmid in RECORD_PMID.findall(read_fixture(name))]
    assert [record.pmid for record in result.records] == expected_pmids
    for record in result.records:
        assert record.title and not LEFTOVER_MARKUP.search(record.title + record.abstract)
        assert record.url == f"https://pubmed.ncbi.nlm.nih.gov/{record.pmid}/"
        assert record.entrez_date is not None
        dt.date.fromisoformat(record.entrez_date)
        assert record.published is not None
        assert re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", record.published)


@pytest.mark.parametrize("name", sorted(OTHER_XML))
def test_other_eutils_xml_is_rejected_naming_its_root(name: str) -> None:
    with pytest.raises(MalformedXmlError, match=f"got <{re.escape(OTHER_XML[name])}>"):
        parse_pubmed_file(FIXTURES / name)


def test_structured_abstract_reads_label_then_text_per_section() -> None:
    record = records_by_pmid("biopython/pubmed4.xml")["27797938"]

    sections = record.abstract.split("\n")
    assert [section.split(": ", 1)[0] for section in sections] == [
        "OBJECTIVE",
        "DESIGN",
        "RESULTS",
        "CONCLUSIONS",
    ]
    assert sections[0].startswith("OBJECTIVE: Telomere shortening occurs as an early event")
    assert "95% CI 1.07 to 2.78; ptrend=0.048)" in sections[2]
    assert "(linkage disequilibrium r2<0.25)" in sections[2]
    assert "BMJ Publishing Group" not in record.abstract
    assert record.title == (
        "Leucocyte telomere length, genetic variants at the TERT gene region and risk of "
        "pancreatic cancer."
    )


def test_article_metadata_is_read_from_citation_and_pubmed_data() -> None:
    record = records_by_pmid("biopython/pubmed4.xml")["27797938"]

    assert record.kind == "article" and record.version == 1
    assert record.journal == "Gut"
    assert record.doi == "10.1136/gutjnl-2016-312510"
    assert record.pmcid == "PMC5442267"
    assert record.published == "2017-06"
    assert record.entrez_date == "2016-11-01"
    assert record.language == "eng"
    assert len(record.mesh_terms) == 21
    assert record.mesh_terms[:2] == ("Adenocarcinoma", "Adult")
    assert record.mesh_terms[-1] == "United States"
    assert record.keywords == ("PANCREATIC CANCER",)
    assert len(record.authors) == 22
    assert record.authors[:2] == ("Ying Bao", "Jennifer Prescott")
    assert "Observational Study" in record.publication_types
    assert not record.retracted and record.retraction_notice_pmids == ()


def test_inline_html_and_mathml_flatten_to_readable_text() -> None:
    record = records_by_pmid("biopython/pubmed6.xml")["30108519"]

    assert record.title == (
        'A "Blood Relationship" Between the Overlooked Minimum Lactate Equivalent and Maximal '
        "Lactate Steady State in Trained Runners. Back to the Old Days?"
    )
    assert "maximal oxygen uptake ( V.O2max ) 67.6 ± 4.1 ml·kg-1·min-1]" in record.abstract
    assert "incremental running test for V.O2max determination, and 2)" in record.abstract
    assert "LEmin+1mM was not different from MLSS (P = 0.47; ES: 0.09)" in record.abstract
    assert "27% lower than MLSS (P < 0.001; ES: 3.54)" in record.abstract
    assert "\n" not in record.abstract and "  " not in record.abstract
    assert "mml" not in record.abstract


def test_mathml_prescripts_read_before_their_base() -> None:
    record = records_by_pmid("biopython/pubmed7.xml")["29963580"]

    assert "(1) inhaled 3He/129Xe MRI ventilation and apparent diffusion" in record.abstract
    assert "(3) ultrashort echo-time 1H MRI proton density measurements" in record.abstract
    assert "free-breathing 1H MRI specific ventilation" in record.abstract
    assert record.authors[-1] == "Canadian Respiratory Research Network"
    assert record.pmcid == "PMC6022861"


def test_escaped_characters_and_sub_tags_read_naturally() -> None:
    record = records_by_pmid("biopython/pubmed5.xml")["28775130"]

    assert "subclinical hypothyroidism (TSH >4.5 mIU/L)" in record.abstract
    assert "compared with normal TSH (0.4-<4.5 mIU/L)" in record.abstract
    assert "(ORQ3=4.15, 95% CI 1.56 to 11.01, ORQ4=4.76" in record.abstract
    assert record.abstract.split("\n")[1].startswith("METHODS: Self-reported lifetime")


def test_numeric_character_references_decode_and_spaces_normalise() -> None:
    record = records_by_pmid("single_pmid/39382274.xml")["39382274"]

    assert record.authors[0] == "Tania Blanco-Martín"
    assert record.authors[-1] == (
        "GEMARA-SEIMC/CIBERINFEC Study Group on the activity and resistance mechanisms to new "
        "β-lactams and β-lactamase inhibitors (PROTECT)"
    )


def test_book_article_is_read_as_a_book() -> None:
    result = parse_pubmed_file(FIXTURES / "eutils_samples/efetch.pubmedbook.xml")

    (record,) = result.records
    assert record.kind == "book"
    assert record.pmid == "20301295"
    assert record.title == "GeneReviews™"
    assert record.abstract.startswith("GeneReviews are expert-authored, peer-reviewed disease")
    assert "Copyright" not in record.abstract
    assert record.published == "1993"
    assert record.entrez_date == "2010-03-20"
    assert record.language == "eng"
    # The book lists only its editors (Pagon, Bird, ...), who are not authors of the record.
    assert record.authors == ()
    assert record.journal is None


def test_baseline_style_gzip_file_is_read() -> None:
    result = parse_pubmed_file(FIXTURES / "test_current_medline.xml.gz")

    assert [record.pmid for record in result.records] == [
        "36400559",
        "2930949",
        "11446611",
        "28786991",
    ]
    assert sum(1 for record in result.records if record.abstract) == 3
    record = result.records[0]
    assert record.title == "Back Pain: Differential Diagnosis and Management."
    assert "If these options have been exhausted and pain persists for greater than 6 weeks" in (
        record.abstract
    )
    assert record.journal == "Neurologic clinics"
    assert record.authors == ("David Gibbs", "Ben G McGahan", "Alexander E Ropper", "David S Xu")
    assert record.published == "2023-02"
    assert record.entrez_date == "2022-11-18"
    assert record.doi == "10.1016/j.ncl.2022.07.002"
    assert record.pmcid is None
    assert record.keywords == ("Back pain", "Diagnosis", "Management", "Outpatient")
    assert record.publication_types == ("Journal Article", "Review")
    assert "Low Back Pain" in record.mesh_terms


def test_gzip_bytes_and_plain_bytes_parse_the_same() -> None:
    compressed = (FIXTURES / "test_current_medline.xml.gz").read_bytes()

    from_gzip = parse_pubmed_xml(compressed)
    from_plain = parse_pubmed_xml(gzip.decompress(compressed))
    from_stream = parse_pubmed_xml(io.BytesIO(gzip.decompress(compressed)))

    assert from_gzip == from_plain == from_stream
    assert len(from_gzip.records) == 4


def test_ninety_three_article_file_counts_and_abstracts() -> None:
    result = parse_pubmed_file(FIXTURES / "pubMR_pubmed_result_93articles.xml")

    assert len(result.records) == 93
    assert len({record.pmid for record in result.records}) == 93
    assert [record.pmid for record in result.records if not record.abstract] == ["28328320"]
    assert all(record.doi for record in result.records)


def test_publisher_abstract_in_another_language_is_not_mixed_in() -> None:
    record = records_by_pmid("pubMR_pubmed_result_93articles.xml")["30124210"]

    assert record.language == "chi"
    assert record.title.startswith("[Effects of serine/threonine-protein kinase B-Raf-activated")
    assert record.abstract.startswith("OBJECTIVE: To investigate the effect of")
    assert not any("\u4e00" <= character <= "\u9fff" for character in record.abstract)


def test_season_reduces_to_its_first_month_or_to_the_year() -> None:
    assert records_by_pmid("single_pmid/32294727.xml")["32294727"].published == "2020-01"
    assert records_by_pmid("single_pmid/32437181.xml")["32437181"].published == "2020-07"
    assert records_by_pmid("biopython/pubmed1.xml")["12091962"].published == "1990"


def test_article_title_is_preferred_to_vernacular_title() -> None:
    record = records_by_pmid("single_pmid/36987902.xml")["36987902"]

    assert record.title == (
        "Patients over 75 years admitted to the National Burn Centre, Haukeland University "
        "Hospital, 2000-19."
    )
    assert record.language == "eng"


def test_vernacular_title_stands_in_for_a_missing_article_title() -> None:
    # Derived from the real record 36987902 with its English title removed.
    payload = replace_once(
        read_fixture("single_pmid/36987902.xml"),
        b"<ArticleTitle>Patients over 75 years admitted to the National Burn Centre, Haukeland "
        b"University Hospital, 2000-19.</ArticleTitle>",
        b"<ArticleTitle></ArticleTitle>",
    )

    (record,) = parse_pubmed_xml(payload).records

    assert record.title == (
        "Pasienter over 75 år innlagt ved Brannskadeavdelinga, Haukeland universitetssjukehus "
        "2000–19."
    )


def test_book_chapter_takes_its_own_title_and_authors() -> None:
    # Derived from the real GeneReviews record: a chapter title and its authors are added to
    # the book document, where NLM puts them for chapter records.
    payload = replace_once(
        read_fixture("eutils_samples/efetch.pubmedbook.xml"),
        b"</Book>",
        b'</Book><ArticleTitle book="gene" part="gr_22q11deletion">22q11.2 Deletion '
        b'Syndrome</ArticleTitle><AuthorList Type="authors"><Author><LastName>McDonald-McGinn'
        b"</LastName><ForeName>Donna M</ForeName><Initials>DM</Initials></Author></AuthorList>",
    )

    (record,) = parse_pubmed_xml(payload).records

    assert record.kind == "book"
    assert record.title == "22q11.2 Deletion Syndrome"
    assert record.journal == "GeneReviews™"
    assert record.authors == ("Donna M McDonald-McGinn",)


def test_erratum_is_not_taken_for_a_retraction() -> None:
    record = records_by_pmid("single_pmid/38962805.xml")["38962805"]

    assert record.title == "Correction."
    assert "Published Erratum" in record.publication_types
    assert not record.retracted and record.retraction_notice_pmids == ()


def test_empty_article_set_gives_no_records() -> None:
    # An efetch for PMIDs that no longer exist returns the envelope with nothing inside; the
    # payload is a real response with its only article cut out.
    real = read_fixture("single_pmid/38962805.xml")
    empty = real[: real.index(b"<PubmedArticle>")] + real[real.index(b"</PubmedArticleSet>") :]

    result = parse_pubmed_xml(empty)

    assert result.records == [] and result.deleted_pmids == [] and result.skipped == 0


def retraction_payload(publication_type: bool, retraction_in: bool) -> bytes:
    # Derived from the real record 38962805: the retraction markers are added where NLM puts
    # them, a PublicationType in the article and a CommentsCorrections in the citation.
    payload = read_fixture("single_pmid/38962805.xml")
    if publication_type:
        payload = replace_once(
            payload,
            b"</PublicationTypeList>",
            b'<PublicationType UI="D016441">Retracted Publication</PublicationType>'
            b"</PublicationTypeList>",
        )
    if retraction_in:
        payload = replace_once(
            payload,
            b"<CommentsCorrectionsList>",
            b'<CommentsCorrectionsList><CommentsCorrections RefType="RetractionIn">'
            b"<RefSource>AIDS Care. 2025 Jan;37(1):1.</RefSource>"
            b'<PMID Version="1">39999999</PMID></CommentsCorrections>',
        )
    return payload


@pytest.mark.parametrize(
    ("publication_type", "retraction_in", "notices"),
    [(True, False, ()), (False, True, ("39999999",)), (True, True, ("39999999",))],
)
def test_retraction_is_detected_from_type_or_retraction_notice(
    publication_type: bool, retraction_in: bool, notices: tuple[str, ...]
) -> None:
    (record,) = parse_pubmed_xml(retraction_payload(publication_type, retraction_in)).records

    assert record.retracted
    assert record.retraction_notice_pmids == notices
    assert record.pmid == "38962805"


def test_delete_citation_block_lists_deleted_pmids() -> None:
    # Derived from the real update-style file: NLM appends DeleteCitation after the articles.
    payload = replace_once(
        read_fixture("test_current_medline.xml.gz"),
        b"</PubmedArticleSet>",
        b'<DeleteCitation>\n<PMID Version="1">12345678</PMID>\n<PMID Version="2">2930949</PMID>\n'
        b"</DeleteCitation>\n</PubmedArticleSet>",
    )

    result = parse_pubmed_xml(payload)
    items = list(iter_pubmed_xml(io.BytesIO(payload)))

    assert result.deleted_pmids == ["12345678", "2930949"]
    assert len(result.records) == 4
    assert items[-2:] == [DeletedCitation("12345678", 1), DeletedCitation("2930949", 2)]


def test_malformed_records_are_skipped_and_counted() -> None:
    # Derived from the real update-style file: record 2 loses its PMID, record 3 its title.
    payload = read_fixture("test_current_medline.xml.gz")
    payload = replace_once(payload, b'<PMID Version="1">2930949</PMID>', b"")
    payload = replace_once(payload, b"<ArticleTitle>Acute back pain.</ArticleTitle>", b"")

    result = parse_pubmed_xml(payload)

    assert [record.pmid for record in result.records] == ["36400559", "28786991"]
    assert result.skipped == 2
    assert result.skip_reasons == ["record 2: no PMID", "record 3 (PMID 11446611): no title"]
    skipped = [
        item for item in iter_pubmed_xml(io.BytesIO(payload)) if isinstance(item, SkippedRecord)
    ]
    assert skipped == [SkippedRecord(2, None, "no PMID"), SkippedRecord(3, "11446611", "no title")]


def test_medline_date_and_pmid_version_are_read() -> None:
    payload = replace_once(
        read_fixture("single_pmid/38962805.xml"),
        b"<PubDate><Year>2024</Year><Month>Jul</Month></PubDate>",
        b"<PubDate><MedlineDate>1998 Dec-1999 Jan</MedlineDate></PubDate>",
    )
    payload = replace_once(
        payload, b'<PMID Version="1">38962805</PMID>', b'<PMID Version="2">38962805</PMID>'
    )

    (record,) = parse_pubmed_xml(payload).records

    assert record.published == "1998-12"
    assert record.version == 2


def test_article_date_is_used_when_pub_date_is_unusable() -> None:
    payload = replace_once(
        read_fixture("single_pmid/38962805.xml"),
        b"<PubDate><Year>2024</Year><Month>Jul</Month></PubDate>",
        b"<PubDate><MedlineDate>undated</MedlineDate></PubDate>",
    )

    (record,) = parse_pubmed_xml(payload).records

    assert record.published == "2024-07-04"


def test_truncated_document_raises_and_returns_nothing() -> None:
    whole = read_fixture("pubMR_pubmed_result_93articles.xml")
    truncated = whole[: len(whole) // 2]

    with pytest.raises(MalformedXmlError, match="malformed or truncated"):
        parse_pubmed_xml(truncated)

    streamed: list[object] = []
    with pytest.raises(MalformedXmlError):
        streamed.extend(iter_pubmed_xml(io.BytesIO(truncated)))
    assert 30 < len(streamed) < 93


def test_truncated_gzip_file_raises(tmp_path: Path) -> None:
    compressed = (FIXTURES / "test_current_medline.xml.gz").read_bytes()
    path = tmp_path / "pubmed25n0001.xml.gz"
    path.write_bytes(compressed[: len(compressed) // 2])

    with pytest.raises(MalformedXmlError, match="corrupt or truncated"):
        parse_pubmed_file(path)


def test_empty_payload_raises() -> None:
    with pytest.raises(MalformedXmlError):
        parse_pubmed_xml(b"")


def with_doctype_subset(subset: bytes, title_text: bytes) -> bytes:
    # Derived from the real pubmed4.xml response: an internal DTD subset is added to its NLM
    # DOCTYPE line and the article title refers to the entity it declares.
    payload = read_fixture("biopython/pubmed4.xml")
    payload = replace_once(
        payload, b'pubmed_180101.dtd">', b'pubmed_180101.dtd" [' + subset + b"]>"
    )
    return replace_once(
        payload, b"<ArticleTitle>Leucocyte", b"<ArticleTitle>" + title_text + b" Leucocyte"
    )


def test_billion_laughs_is_refused_quickly() -> None:
    levels = [b'<!ENTITY lol0 "lol">'] + [
        b'<!ENTITY lol%d "%s">' % (level, b"&lol%d;" % (level - 1) * 10) for level in range(1, 10)
    ]
    payload = with_doctype_subset(b"".join(levels), b"&lol9;")

    started = time.perf_counter()
    with pytest.raises(UnsafeXmlError, match="lol0"):
        parse_pubmed_xml(payload)

    assert time.perf_counter() - started < 0.5


def test_quadratic_blowup_is_refused() -> None:
    payload = with_doctype_subset(b'<!ENTITY a "' + b"x" * 50_000 + b'">', b"&a;" * 20_000)

    with pytest.raises(UnsafeXmlError):
        parse_pubmed_xml(payload)


@pytest.mark.parametrize("entity_kind", ["general", "parameter"])
def test_external_entity_is_refused_without_reading_the_file(
    entity_kind: str,
    tmp_path: Path,
    audit_events: list[tuple[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "MEDKB-XXE-CANARY-7f3a9c"
    secret_path = tmp_path / "secret.txt"
    secret_path.write_text(secret)
    if entity_kind == "general":
        subset = b'<!ENTITY xxe SYSTEM "%s">' % secret_path.as_uri().encode()
    else:
        subset = b'<!ENTITY %% xxe SYSTEM "%s"> %%xxe;' % secret_path.as_uri().encode()
    payload = with_doctype_subset(subset, b"&xxe;")
    audit_events.clear()

    with pytest.raises(UnsafeXmlError) as raised:
        parse_pubmed_xml(payload)

    assert secret not in str(raised.value) and secret not in repr(raised.value)
    assert secret not in caplog.text
    assert not [event for event in audit_events if str(secret_path) in event[1]]


def test_external_dtd_is_never_loaded(tmp_path: Path, audit_events: list[tuple[str, str]]) -> None:
    secret = "MEDKB-DTD-CANARY-41be02"
    dtd_path = tmp_path / "evil.dtd"
    dtd_path.write_text(f'<!ENTITY xxe "{secret}">')
    payload = replace_once(
        read_fixture("biopython/pubmed4.xml"),
        b'PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2018//EN" '
        b'"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_180101.dtd"',
        b'SYSTEM "%s"' % dtd_path.as_uri().encode(),
    )
    payload = replace_once(payload, b"<ArticleTitle>Leucocyte", b"<ArticleTitle>&xxe; Leucocyte")
    audit_events.clear()

    # Without the DTD the entity is undefined, which shows the DTD was not read.
    with pytest.raises(MalformedXmlError, match="undefined entity") as raised:
        parse_pubmed_xml(payload)

    assert secret not in str(raised.value)
    assert not [event for event in audit_events if str(dtd_path) in event[1]]


def test_nlm_doctype_parses_without_network_or_file_access(
    audit_events: list[tuple[str, str]],
) -> None:
    payloads = [read_fixture(name) for name in ARTICLE_SET_FILES]
    assert all(b"https://dtd.nlm.nih.gov/" in payload for payload in payloads[:5])
    audit_events.clear()

    records = [record for payload in payloads for record in parse_pubmed_xml(payload).records]

    assert len(records) > 180
    assert audit_events == []


class CountingStream(io.RawIOBase):
    """A byte stream that serves ``head + body * repeats + tail`` and counts what it served."""

    def __init__(self, head: bytes, body: bytes, tail: bytes, repeats: int = 1) -> None:
        self._chunks = iter([head, *[body] * repeats, tail])
        self._pending = memoryview(b"")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not len(self._pending):
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.bytes_read += size
        return size


def split_article_set(name: str) -> tuple[bytes, bytes, bytes]:
    payload = read_fixture(name)
    start = payload.index(b"<PubmedArticle>")
    end = payload.rindex(b"</PubmedArticleSet>")
    return payload[:start], payload[start:end], payload[end:]


def test_records_stream_out_before_the_document_is_read() -> None:
    head, body, tail = split_article_set("pubMR_pubmed_result_93articles.xml")
    source = CountingStream(head, body, tail)

    first = next(iter_pubmed_xml(io.BufferedReader(source)))

    assert isinstance(first, PubmedRecord) and first.pmid == "30527807"
    assert source.bytes_read < (len(head) + len(body) + len(tail)) // 10


def test_memory_stays_bounded_while_streaming_a_large_document() -> None:
    head, body, tail = split_article_set("pubMR_pubmed_result_93articles.xml")
    stream = io.BufferedReader(CountingStream(head, body, tail, repeats=3))

    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_pubmed_xml(stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # The document is 6 MB; kept as a tree it would take over 25 MB.
    assert count == 3 * 93
    assert peak < 4_000_000


def test_ninety_three_article_file_parses_in_well_under_a_second() -> None:
    payload = read_fixture("pubMR_pubmed_result_93articles.xml")

    started = time.perf_counter()
    result = parse_pubmed_xml(payload)
    elapsed = time.perf_counter() - started

    assert len(result.records) == 93
    # A bound with headroom for a busy shared test machine; it runs in about 0.1 s.
    assert elapsed < 1.0
