from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from medkb_assets.sources.pubmed.bulk import iter_record_chunks, resolve_files, select_records
from medkb_assets.sources.pubmed.parser import parse_pubmed_xml

FIXTURES = Path(__file__).parents[2] / "fixtures" / "pubmed"
MEDLINE_UPDATE = FIXTURES / "test_current_medline.xml.gz"
NINETY_THREE = FIXTURES / "pubMR_pubmed_result_93articles.xml"


def test_record_chunks_are_the_files_bytes_verbatim_even_across_read_blocks(monkeypatch):
    monkeypatch.setattr("medkb_assets.sources.pubmed.bulk._READ_BYTES", 1000)
    payload = NINETY_THREE.read_bytes()

    chunks = list(iter_record_chunks(io.BytesIO(payload)))

    assert len(chunks) == 93
    assert all(chunk in payload for chunk in chunks)
    assert chunks[0].startswith(b"<PubmedArticle>") and chunks[-1].endswith(b"</PubmedArticle>")


def test_records_of_the_entrez_day_matching_a_keyword_are_selected():
    selection = select_records(
        [MEDLINE_UPDATE, NINETY_THREE], "2017-08-09", ["tuberculosis"], max_records=10
    )

    assert selection.matched_pmids == ["28786991"]
    assert selection.scanned == 93 + len(list(iter_record_chunks(gzip.open(MEDLINE_UPDATE))))
    reparsed = parse_pubmed_xml(selection.as_xml())
    assert [record.pmid for record in reparsed.records] == ["28786991"]
    assert reparsed.records[0].title.startswith("Yield of community-based tuberculosis")


def test_a_record_of_another_day_or_topic_is_left_out():
    other_day = select_records([MEDLINE_UPDATE], "2017-08-10", ["tuberculosis"], max_records=10)
    other_topic = select_records([MEDLINE_UPDATE], "2017-08-09", ["asthma"], max_records=10)

    assert other_day.matched_pmids == [] and other_topic.matched_pmids == []


def test_the_cap_keeps_the_first_records_and_reports_every_match():
    day_with_two = "2017-10-18"  # 29038347 and 29038521 both entered PubMed that day

    selection = select_records([NINETY_THREE], day_with_two, ["cancer", "akt"], max_records=1)

    assert selection.cap_hit
    assert selection.matched_total == 2
    assert len(selection.matched_pmids) == 1


def test_a_folder_or_glob_resolves_and_nothing_matching_is_an_error(tmp_path):
    assert MEDLINE_UPDATE in resolve_files(str(FIXTURES))
    assert resolve_files(str(FIXTURES / "*.xml.gz")) == [MEDLINE_UPDATE]
    with pytest.raises(FileNotFoundError, match="no NLM XML files match"):
        resolve_files(str(tmp_path / "*.xml"))
