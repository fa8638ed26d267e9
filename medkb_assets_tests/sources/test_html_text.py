"""HTML flattening and keyword matching shared by the public-health sources."""

from __future__ import annotations

from pathlib import Path

import defusedxml.ElementTree as SafeElementTree

from medkb_assets.sources.html_text import html_to_text, keyword_pattern, normalize_space

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_paragraphs_headings_and_list_items_become_separate_lines() -> None:
    markup = (
        "<h2>Advice</h2><p>WHO advises:</p>"
        "<ul><li>vaccinate</li><li><p>report <b>cases</b></p></li><li></li></ul>"
        "<ol><li><ul><li>nested</li></ul></li></ol><div>last<br>line</div>"
    )

    assert html_to_text(markup) == (
        "Advice\nWHO advises:\n- vaccinate\n- report cases\n- nested\nlast\nline"
    )


def test_scripts_styles_and_page_title_are_dropped() -> None:
    markup = (
        "<html><head><title>Page title</title><style>p { color: red; }</style>"
        "<script>var a = '<p>not text</p>';</script></head>"
        "<body><noscript>Enable scripts</noscript><p>Body text</p><script/></body></html>"
    )

    assert html_to_text(markup) == "Body text"


def test_entities_are_decoded_and_whitespace_collapsed() -> None:
    markup = (
        "<p>WHO&rsquo;s  risk&nbsp;assessment:\n  cases &ge; 5 &amp; rising &#8212; &lt;b&gt;</p>"
    )

    assert html_to_text(markup) == "WHO’s risk assessment: cases ≥ 5 & rising — <b>"


def test_table_rows_are_lines_and_cells_are_separated() -> None:
    markup = (
        "<table><tr><th>Country</th><th>Cases</th></tr>"
        "<tr><td>Dominica</td><td>1</td></tr><tr><td>Cuba</td><td>1</td></tr></table>"
    )

    assert html_to_text(markup) == "Country | Cases\nDominica | 1\nCuba | 1"


def test_preformatted_text_keeps_its_line_breaks() -> None:
    assert html_to_text("<pre>Week 1: 10\nWeek 2: 14</pre><p>after</p>") == (
        "Week 1: 10\nWeek 2: 14\nafter"
    )


def test_text_without_markup_and_empty_markup() -> None:
    assert html_to_text("  plain\ttext  ") == "plain text"
    assert html_to_text("") == ""
    assert html_to_text("<p> </p><div></div>") == ""


def test_a_real_medlineplus_summary_flattens_to_its_paragraphs_and_items() -> None:
    topics_file = FIXTURES / "medlineplus" / "mplus_topics_2012-07-21.xml"
    summary = SafeElementTree.fromstring(topics_file.read_bytes()).findtext(
        "health-topic/full-summary"
    )
    assert summary

    lines = html_to_text(summary).split("\n")

    assert lines[0].startswith("Your abdomen extends from below your chest to your groin.")
    assert lines[1].startswith("Call your healthcare provider if mild pain lasts a week")
    assert lines[2:] == [
        "- You have abdominal pain that is sudden and sharp",
        "- You also have pain in your chest, neck or shoulder",
        "- You're vomiting blood or have blood in your stool",
        "- Your abdomen is stiff, hard and tender to touch",
        "- You can't move your bowels, especially if you're also vomiting",
    ]


def test_a_syndicated_cdc_page_loses_its_head_and_scripts() -> None:
    page = (FIXTURES / "cdc" / "content" / "1001.html").read_text()

    text = html_to_text(page)

    assert text.split("\n")[:2] == ["Diabetes — United States, 2006 and 2010", "Introduction"]
    assert "metricsPage" not in text
    assert "tracking" not in text
    assert "font-size" not in text


def test_keywords_match_whole_words_ignoring_case() -> None:
    pattern = keyword_pattern(["insulin", "blood pressure", "covid-19"])
    assert pattern is not None

    assert pattern.search("Insulin-dependent diabetes")
    assert pattern.search("high BLOOD\n  pressure")
    assert pattern.search("COVID-19 vaccines")
    assert not pattern.search("proinsulin levels")
    assert not pattern.search("insulins")
    assert not pattern.search("bloodpressure")


def test_blank_keywords_give_no_pattern() -> None:
    assert keyword_pattern([]) is None
    assert keyword_pattern(["", "  "]) is None


def test_normalize_space() -> None:
    assert normalize_space(" a\u00a0 b\n\tc ") == "a b c"
