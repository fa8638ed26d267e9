from __future__ import annotations

import datetime as dt

import pandas as pd

from medkb_assets.index.report import counts_table, documents_per_day_chart, new_documents_table

TODAY = dt.date(2026, 11, 30)


def _manifest(rows: list[tuple[str, str, str, list[str]]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "doc_id": doc_id,
                "source": doc_id.split(":")[0],
                "title": f"Title of {doc_id}",
                "url": f"https://example.org/{doc_id}",
                "entrez_date": day,
                "published": None,
                "topics": topics,
            }
            for doc_id, day, _, topics in rows
        ]
    )


MANIFEST = _manifest(
    [
        ("pubmed:1", "2026-11-29", "", ["diabetes"]),
        ("pubmed:2", "2026-11-29", "", ["diabetes", "hypertension"]),
        ("who:7", "2026-11-30", "", ["infectious_outbreaks"]),
        ("pubmed:3", "2024-01-01", "", ["diabetes"]),
    ]
)


def test_new_documents_lists_only_what_the_parent_lacked_newest_first():
    parent = MANIFEST[MANIFEST["doc_id"].isin(["pubmed:1", "pubmed:3"])]

    table = new_documents_table(MANIFEST, parent).splitlines()

    assert len(table) == 4
    assert "who:7" in table[2] and "2026-11-30" in table[2]
    assert "pubmed:2" in table[3] and "diabetes, hypertension" in table[3]
    assert new_documents_table(MANIFEST, MANIFEST) == "_no new documents_"


def test_counts_table_counts_a_document_under_each_of_its_topics():
    table = counts_table(MANIFEST)

    diabetes = next(line for line in table.splitlines() if line.startswith("| diabetes"))
    assert [cell.strip() for cell in diabetes.strip("|").split("|")] == ["diabetes", "3", "0", "3"]


def test_chart_draws_one_sparkline_per_topic_over_the_last_month():
    chart = documents_per_day_chart(MANIFEST, TODAY).splitlines()

    diabetes = next(line for line in chart if line.startswith("| diabetes"))
    spark = diabetes.split("`")[1]
    assert len(spark) == 30
    assert spark[-2] == "█" and spark[-1] == " " and spark[:-2].strip() == ""
    assert diabetes.endswith("| 2 |")
