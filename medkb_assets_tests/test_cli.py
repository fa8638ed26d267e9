"""The ``medkb`` command line, run as a separate process against a real index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medkb_assets.embeddings.model import EmbeddingModel
from medkb_assets.storage import DATA_DIR_ENV_VAR
from medkb_assets_tests.test_search import (
    build_corpus_index,
    medlineplus_documents,
    pubmedqa_documents,
    pubmedqa_records,
    recall_subset_pmids,
)

REPO_ROOT = Path(__file__).parents[1]
HIT_KEYS = {
    "rank",
    "doc_id",
    "score",
    "title",
    "source",
    "source_id",
    "date",
    "url",
    "topics",
    "partitions",
    "index_version",
}
CLI_TIMEOUT_S = 300


def run_medkb(
    data_dir: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m medkb_assets.cli`` with ``MEDKB_DATA_DIR`` set to ``data_dir``."""
    environment = {**os.environ, DATA_DIR_ENV_VAR: str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "medkb_assets.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def pmids() -> list[str]:
    return recall_subset_pmids()[:40]


@pytest.fixture(scope="module")
def data_dir(
    tmp_path_factory: pytest.TempPathFactory, embedding_model: EmbeddingModel, pmids: list[str]
) -> Path:
    directory = tmp_path_factory.mktemp("cli-data")
    documents = pubmedqa_documents(pmids) + medlineplus_documents()
    build_corpus_index(directory, documents, embedding_model)
    return directory


def question(pmid: str) -> str:
    return str(pubmedqa_records()[pmid]["QUESTION"])


@pytest.mark.slow
def test_json_output_lists_ranked_hits_with_provenance_and_index_version(
    data_dir: Path, pmids: list[str]
) -> None:
    result = run_medkb(data_dir, "search", question(pmids[0]), "-k", "3", "--json")

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["index_version"] == "v000001"
    assert payload["query"] == question(pmids[0])
    assert [hit["rank"] for hit in payload["hits"]] == [1, 2, 3]
    assert all(set(hit) == HIT_KEYS for hit in payload["hits"])
    assert all(hit["index_version"] == "v000001" for hit in payload["hits"])
    first = payload["hits"][0]
    assert first["doc_id"] == f"pubmed:{pmids[0]}"
    assert first["url"] == f"https://pubmed.ncbi.nlm.nih.gov/{pmids[0]}/"
    assert first["partitions"] and first["topics"]


@pytest.mark.slow
def test_stdin_queries_are_answered_in_order_one_json_line_each(
    data_dir: Path, pmids: list[str]
) -> None:
    asked = [pmids[5], pmids[1], pmids[9]]
    stdin = "\n".join([question(asked[0]), "", question(asked[1]), question(asked[2])]) + "\n"

    result = run_medkb(
        data_dir, "search", "-", "-k", "2", "--source", "pubmed", "--json", stdin=stdin
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    answers = [json.loads(line) for line in lines]
    assert [answer["query"] for answer in answers] == [question(pmid) for pmid in asked]
    assert [answer["hits"][0]["doc_id"] for answer in answers] == [
        f"pubmed:{pmid}" for pmid in asked
    ]
    assert all(hit["source"] == "pubmed" for answer in answers for hit in answer["hits"])


@pytest.mark.slow
def test_text_output_names_the_version_and_each_hit(data_dir: Path, pmids: list[str]) -> None:
    year = pubmedqa_records()[pmids[2]]["YEAR"]

    result = run_medkb(data_dir, "search", question(pmids[2]), "-k", "2", "--since", year)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f'index v000001 | 2 hits for "{question(pmids[2])}"'
    rank, score, doc_id, date, source = lines[1].split()
    assert (rank, doc_id, date, source) == ("1.", f"pubmed:{pmids[2]}", year, "pubmed")
    assert 0.0 < float(score) <= 1.0
    assert f"https://pubmed.ncbi.nlm.nih.gov/{pmids[2]}/" in result.stdout
    assert sum(line.lstrip().startswith("2. ") for line in lines) == 1


def test_missing_index_exits_non_zero_and_says_how_to_build_one(tmp_path: Path) -> None:
    result = run_medkb(tmp_path, "search", "asthma in children")

    assert result.returncode == 1
    assert result.stdout == ""
    assert "no FAISS index" in result.stderr
    assert "make demo" in result.stderr
    assert "dagster asset materialize -m medkb_assets.definitions --select faiss_index" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["search", "   "], "QUERY is empty"),
        (["search", "asthma", "-k", "0"], "must be at least 1"),
        (["search", "asthma", "-k", "ten"], "not a whole number"),
        (["search", "asthma", "--since", "2024-02-30"], "not a date"),
        (["search", "asthma", "--source", "twitter"], "invalid choice: 'twitter'"),
        (["search", "asthma", "--topic", "Heart Disease"], "not a topic key"),
    ],
)
def test_invalid_arguments_exit_with_status_2_and_a_message(
    tmp_path: Path, arguments: list[str], complaint: str
) -> None:
    result = run_medkb(tmp_path, *arguments)

    assert result.returncode == 2
    assert complaint in result.stderr
