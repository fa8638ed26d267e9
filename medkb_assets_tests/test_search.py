"""Search over a real index: PubMedQA abstracts and MedlinePlus summaries, embedded by the real
model and indexed by the real builder."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medkb_assets.config import load_config
from medkb_assets.documents.schema import DOCUMENT_SCHEMA
from medkb_assets.embeddings.cache import embed_partition
from medkb_assets.embeddings.model import EmbeddingModel, document_text
from medkb_assets.index.builder import BuildStats, IndexType, build_index
from medkb_assets.index.store import (
    SUMMARY_FILE,
    load_current_index,
    publish_version,
    stored_vectors,
)
from medkb_assets.search import (
    IndexNotFoundError,
    ModelMismatchError,
    Searcher,
    parse_since,
    search,
)
from medkb_assets.storage import DATA_DIR_ENV_VAR, DataLayout, PartitionRef

FIXTURES = Path(__file__).parent / "fixtures"
PUBMEDQA_PATH = FIXTURES / "pubmedqa" / "pqal_dev.json"
MEDLINEPLUS_PATH = FIXTURES / "search" / "medline_topic_summaries.json"

RECALL_SUBSET_SIZE = 100
RECALL_K = 10
RECALL_FLOOR = 0.95

UNMATCHED_TOPIC = "general"
UNDATED_PARTITION_YEAR = "2006"
MEDLINEPLUS_PARTITION_DATE = "2012-07-21"
FETCHED_AT = dt.datetime(2025, 1, 2, 6, 0, tzinfo=dt.UTC)
BUILD_DAY = dt.date(2026, 11, 5)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class CorpusDocument:
    """A test document: what the documents stage would have written for it, in one place."""

    doc_id: str
    source: str
    source_id: str
    title: str
    text: str
    url: str | None
    published: str | None
    entrez_date: str | None
    topics: tuple[str, ...]
    partition_date: str

    @property
    def partitions(self) -> tuple[str, ...]:
        return tuple(f"{self.partition_date}|{topic}" for topic in self.topics)

    def document_row(self, partition: PartitionRef) -> dict[str, Any]:
        """The row of this document in the documents file of ``partition``."""
        return {
            "doc_id": self.doc_id,
            "source": self.source,
            "source_id": self.source_id,
            "title": self.title,
            "text": self.text,
            "url": self.url,
            "published": self.published,
            "entrez_date": self.entrez_date,
            "topics": list(self.topics),
            "journal": None,
            "authors": [],
            "mesh_terms": [],
            "keywords": [],
            "doi": None,
            "pmcid": None,
            "language": "eng",
            "publication_types": [],
            "retracted": False,
            "deleted": False,
            "content_hash": hashlib.sha256(f"{self.title}\n{self.text}".encode()).hexdigest(),
            "fetched_at": FETCHED_AT,
            "partition": partition.key,
            "raw_path": None,
        }


def pubmedqa_records() -> dict[str, dict[str, Any]]:
    """The PubMedQA labelled records, keyed by PMID."""
    records: dict[str, dict[str, Any]] = json.loads(PUBMEDQA_PATH.read_text(encoding="utf-8"))
    return records


def recall_subset_pmids() -> list[str]:
    """The fixed subset the retrieval-quality bar is measured on: the first PMIDs in order."""
    return sorted(pubmedqa_records(), key=int)[:RECALL_SUBSET_SIZE]


def topics_for(text: str) -> tuple[str, ...]:
    """Configured topics whose keywords occur in ``text``; ``general`` when none does."""
    lowered = text.lower()
    config = load_config()
    matched = tuple(
        sorted(
            key
            for key, topic in config.topics.items()
            if any(keyword.lower() in lowered for keyword in topic.keywords)
        )
    )
    return matched or (UNMATCHED_TOPIC,)


def pubmedqa_documents(pmids: list[str]) -> list[CorpusDocument]:
    """PubMed documents for ``pmids``: abstract sections joined, no title (PubMedQA has none).

    PubMedQA gives only the publication year, so that is the document's date, and its topics
    come from its MeSH terms.
    """
    records = pubmedqa_records()
    documents = []
    for pmid in pmids:
        record = records[pmid]
        documents.append(
            CorpusDocument(
                doc_id=f"pubmed:{pmid}",
                source="pubmed",
                source_id=pmid,
                title="",
                text=" ".join(record["CONTEXTS"]),
                url=f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/",
                published=record["YEAR"],
                entrez_date=None,
                topics=topics_for(" ".join(record["MESHES"])),
                partition_date=f"{record['YEAR'] or UNDATED_PARTITION_YEAR}-01-01",
            )
        )
    return documents


def medlineplus_documents() -> list[CorpusDocument]:
    """MedlinePlus health-topic summaries: a second source, undated, with titles."""
    summaries: dict[str, str] = json.loads(MEDLINEPLUS_PATH.read_text(encoding="utf-8"))
    documents = []
    for title, summary_html in sorted(summaries.items()):
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", summary_html)).strip()
        documents.append(
            CorpusDocument(
                doc_id=f"medlineplus:{slug}",
                source="medlineplus",
                source_id=slug,
                title=title,
                text=text,
                url=None,
                published=None,
                entrez_date=None,
                topics=topics_for(f"{title} {text}"),
                partition_date=MEDLINEPLUS_PARTITION_DATE,
            )
        )
    return documents


def build_corpus_index(
    data_dir: Path,
    documents: list[CorpusDocument],
    model: EmbeddingModel,
    index_type: IndexType = "flat",
) -> BuildStats:
    """Runs documents -> embeddings -> index over ``documents`` and publishes a version."""
    layout = DataLayout(data_dir)
    by_partition: dict[PartitionRef, list[dict[str, Any]]] = {}
    for document in documents:
        for key in document.partitions:
            partition = PartitionRef.parse(key)
            by_partition.setdefault(partition, []).append(document.document_row(partition))

    for partition, rows in sorted(by_partition.items(), key=lambda item: item[0].key):
        path = layout.documents_path(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), path)
        embed_partition(path, layout, partition, model)

    # The PubMedQA abstracts date from the 1990s and 2000s; nothing may age out here.
    return build_index(
        layout, model.model_id, retention_days=50 * 365, today=BUILD_DAY, index_type=index_type
    )


@dataclass(frozen=True)
class BuiltCorpus:
    documents: list[CorpusDocument]
    data_dir: Path

    def by_id(self) -> dict[str, CorpusDocument]:
        return {document.doc_id: document for document in self.documents}

    def doc_ids(self, keep: Callable[[CorpusDocument], bool]) -> set[str]:
        return {document.doc_id for document in self.documents if keep(document)}


def published_since(year: int) -> Callable[[CorpusDocument], bool]:
    return lambda document: bool(document.published) and int(document.published or 0) >= year


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, embedding_model: EmbeddingModel
) -> BuiltCorpus:
    documents = pubmedqa_documents(recall_subset_pmids()) + medlineplus_documents()
    data_dir = tmp_path_factory.mktemp("search-data")
    build_corpus_index(data_dir, documents, embedding_model)
    return BuiltCorpus(documents, data_dir)


@pytest.fixture(scope="module")
def searcher(corpus: BuiltCorpus, embedding_model: EmbeddingModel) -> Searcher:
    return Searcher.open(corpus.data_dir, model=embedding_model)


def test_questions_find_their_own_abstract_in_the_top_ten(searcher: Searcher) -> None:
    records = pubmedqa_records()
    pmids = recall_subset_pmids()

    results = searcher.search_many([records[pmid]["QUESTION"] for pmid in pmids], k=RECALL_K)

    found = [
        f"pubmed:{pmid}" in {hit.doc_id for hit in hits}
        for pmid, hits in zip(pmids, results, strict=True)
    ]
    recall = sum(found) / len(found)
    print(f"recall@{RECALL_K} over {len(pmids)} PubMedQA questions: {recall:.2f}")  # noqa: T201
    assert recall >= RECALL_FLOOR


def test_search_returns_k_ranked_hits_with_provenance_and_version(
    searcher: Searcher, corpus: BuiltCorpus
) -> None:
    pmid = recall_subset_pmids()[0]
    question = pubmedqa_records()[pmid]["QUESTION"]

    hits = searcher.search(question, k=5)

    assert [hit.rank for hit in hits] == [1, 2, 3, 4, 5]
    assert hits[0].doc_id == f"pubmed:{pmid}"
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    documents = corpus.by_id()
    for hit in hits:
        document = documents[hit.doc_id]
        assert hit.index_version == searcher.version == "v000001"
        assert (hit.source, hit.source_id, hit.url, hit.title) == (
            document.source,
            document.source_id,
            document.url,
            document.title,
        )
        assert hit.topics == document.topics
        assert hit.partitions == document.partitions
        assert hit.date == document.published


def test_scores_are_cosine_similarities_of_query_and_document(
    searcher: Searcher, corpus: BuiltCorpus, embedding_model: EmbeddingModel
) -> None:
    query = "Does laparoscopic surgery reduce hospital stay?"

    hits = searcher.search(query, k=3)

    documents = corpus.by_id()
    texts = [document_text(documents[h.doc_id].title, documents[h.doc_id].text) for h in hits]
    expected = embedding_model.encode_documents(texts) @ embedding_model.encode_queries([query])[0]
    assert [hit.score for hit in hits] == pytest.approx(expected.tolist(), abs=1e-4)


def test_topic_filter_keeps_only_that_topic_and_still_fills_k(
    searcher: Searcher, corpus: BuiltCorpus
) -> None:
    cancer_docs = corpus.doc_ids(lambda document: "cancer" in document.topics)
    unfiltered = searcher.search("blood glucose control with insulin", k=10)

    hits = searcher.search("blood glucose control with insulin", k=10, topic="cancer")

    # The unfiltered top ten holds few cancer papers, so filtering the nearest neighbours
    # afterwards would have returned fewer than k.
    assert len({hit.doc_id for hit in unfiltered} & cancer_docs) < 10
    assert len(hits) == 10
    assert {hit.doc_id for hit in hits} <= cancer_docs
    assert all("cancer" in hit.topics for hit in hits)


def test_topic_filter_returns_every_member_when_k_exceeds_them(
    searcher: Searcher, corpus: BuiltCorpus
) -> None:
    stroke_docs = corpus.doc_ids(lambda document: "stroke" in document.topics)

    hits = searcher.search("cerebral infarction", k=len(corpus.documents), topic="stroke")

    assert stroke_docs
    assert {hit.doc_id for hit in hits} == stroke_docs


def test_source_filter_excludes_other_sources(searcher: Searcher, corpus: BuiltCorpus) -> None:
    query = "Crohn's disease treatment"
    medlineplus_docs = corpus.doc_ids(lambda document: document.source == "medlineplus")

    medlineplus_hits = searcher.search(query, k=len(corpus.documents), source="medlineplus")
    pubmed_hits = searcher.search(query, k=10, source="pubmed")

    assert {hit.doc_id for hit in medlineplus_hits} == medlineplus_docs
    assert len(pubmed_hits) == 10
    assert all(hit.source == "pubmed" for hit in pubmed_hits)
    assert searcher.search(query, k=10, source="who") == []


def test_since_filter_keeps_documents_dated_on_or_after_the_day(
    searcher: Searcher, corpus: BuiltCorpus
) -> None:
    hits = searcher.search(
        "randomized trial outcomes", k=len(corpus.documents), since=dt.date(2004, 1, 1)
    )

    assert {hit.doc_id for hit in hits} == corpus.doc_ids(published_since(2004))


def test_since_counts_a_year_only_date_as_its_last_day(
    searcher: Searcher, corpus: BuiltCorpus
) -> None:
    hits = searcher.search("patients", k=len(corpus.documents), since=dt.date(2005, 12, 31))

    assert {hit.doc_id for hit in hits} == corpus.doc_ids(published_since(2005))


def test_filters_combine(searcher: Searcher, corpus: BuiltCorpus) -> None:
    recent = published_since(2004)
    expected = corpus.doc_ids(lambda document: "cancer" in document.topics and recent(document))

    hits = searcher.search(
        "tumour",
        k=len(corpus.documents),
        topic="cancer",
        source="pubmed",
        since=dt.date(2004, 1, 1),
    )

    assert expected
    assert {hit.doc_id for hit in hits} == expected


def test_filter_matching_nothing_returns_no_hits(searcher: Searcher) -> None:
    assert searcher.search("anything", topic="no_such_topic") == []
    assert searcher.search("anything", since=dt.date(2030, 1, 1)) == []


def test_filtered_search_on_an_hnsw_index_matches_the_flat_index(
    corpus: BuiltCorpus, embedding_model: EmbeddingModel, tmp_path: Path, searcher: Searcher
) -> None:
    shutil.copytree(corpus.data_dir / "embeddings", tmp_path / "embeddings")
    build_index(
        DataLayout(tmp_path),
        embedding_model.model_id,
        retention_days=50 * 365,
        today=BUILD_DAY,
        index_type="hnsw",
    )
    hnsw = Searcher.open(tmp_path, model=embedding_model)

    for topic in ("stroke", "diabetes", "cancer"):
        approximate = hnsw.search("treatment outcomes", k=10, topic=topic)
        exact = searcher.search("treatment outcomes", k=10, topic=topic)
        assert [hit.doc_id for hit in approximate] == [hit.doc_id for hit in exact]


def test_narrow_filter_on_a_large_hnsw_graph_still_finds_the_exact_best(
    embedding_model: EmbeddingModel, caplog: pytest.LogCaptureFixture
) -> None:
    import faiss

    # Random unit vectors stand in for a large corpus: the graph walk visits a few hundred of
    # them, so a filter allowing a dozen leaves it short and the exact pass has to take over.
    generator = np.random.default_rng(7)
    count = 20_000
    vectors = generator.standard_normal((count, embedding_model.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # Ids with gaps, as an index has after documents left it.
    ids = np.arange(count, dtype=np.int64) * 3 + 5
    index = faiss.IndexIDMap2(
        faiss.IndexHNSWFlat(embedding_model.dimension, 16, faiss.METRIC_INNER_PRODUCT)
    )
    index.add_with_ids(vectors, ids)
    stroke_rows = set(range(0, count, 1_601)[:12])
    topics = [["stroke"] if row in stroke_rows else ["cancer"] for row in range(count)]
    manifest = pd.DataFrame(
        {
            "vector_id": ids,
            "doc_id": [f"pubmed:{row}" for row in range(count)],
            "source": "pubmed",
            "source_id": [str(row) for row in range(count)],
            "title": "",
            "url": None,
            "published": "2024",
            "entrez_date": None,
            "topics": topics,
            "partitions": [[f"2024-01-01|{row_topics[0]}"] for row_topics in topics],
        }
    )
    searcher = Searcher("v000001", index, manifest, embedding_model)
    query = "stroke rehabilitation"

    with caplog.at_level(logging.DEBUG, logger="medkb_assets.search"):
        hits = searcher.search(query, k=10, topic="stroke")

    query_vector = embedding_model.encode_queries([query])[0]
    best = sorted(stroke_rows, key=lambda row: -float(vectors[row] @ query_vector))[:10]
    assert "fell short" in caplog.text
    assert [hit.doc_id for hit in hits] == [f"pubmed:{row}" for row in best]


def test_filters_hold_when_vector_ids_are_sparse(
    corpus: BuiltCorpus, searcher: Searcher, embedding_model: EmbeddingModel
) -> None:
    import faiss

    loaded = load_current_index(DataLayout(corpus.data_dir).index_dir)
    ids, vectors = stored_vectors(loaded.index)
    # Ids far apart, as hash-derived ids would be: too sparse for a bitmap over the id range.
    sparse_ids = ids * 1_000_000_007 + 11
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, sparse_ids)
    manifest = loaded.manifest.set_index("vector_id").loc[ids].reset_index()
    manifest["vector_id"] = sparse_ids
    sparse = Searcher(loaded.version, index, manifest, embedding_model)

    for options in ({"topic": "cancer"}, {"source": "medlineplus"}, {"since": dt.date(2004, 1, 1)}):
        expected = searcher.search("treatment outcomes", k=15, **options)
        hits = sparse.search("treatment outcomes", k=15, **options)
        assert [hit.doc_id for hit in hits] == [hit.doc_id for hit in expected]


def test_search_many_answers_each_query_in_order(searcher: Searcher) -> None:
    records = pubmedqa_records()
    pmids = recall_subset_pmids()[:3]

    results = searcher.search_many([records[pmid]["QUESTION"] for pmid in pmids], k=1)

    assert [hits[0].doc_id for hits in results] == [f"pubmed:{pmid}" for pmid in pmids]


@pytest.mark.parametrize(
    ("query", "options", "message"),
    [
        ("   ", {}, "empty"),
        ("asthma", {"k": 0}, "k must be at least 1"),
        ("asthma", {"source": "twitter"}, "unknown source"),
        ("asthma", {"topic": "Heart Disease"}, "topic key"),
    ],
)
def test_invalid_arguments_are_rejected(
    searcher: Searcher, query: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        searcher.search(query, **options)


def test_opening_without_an_index_says_how_to_build_one(
    tmp_path: Path, embedding_model: EmbeddingModel
) -> None:
    with pytest.raises(IndexNotFoundError, match="faiss_index"):
        Searcher.open(tmp_path, model=embedding_model)


def test_index_built_with_another_model_is_refused(
    tmp_path: Path, corpus: BuiltCorpus, embedding_model: EmbeddingModel
) -> None:
    built = (
        DataLayout(corpus.data_dir).index_dir
        / load_current_index(DataLayout(corpus.data_dir).index_dir).version
    )

    def copy_with_other_model(folder: Path) -> None:
        shutil.copytree(built, folder, dirs_exist_ok=True)
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        summary["model_id"] = "another/model@000000000000"
        (folder / SUMMARY_FILE).write_text(json.dumps(summary), encoding="utf-8")

    publish_version(DataLayout(tmp_path).index_dir, "v000001", copy_with_other_model)

    with pytest.raises(ModelMismatchError, match="another/model@000000000000"):
        Searcher.open(tmp_path, model=embedding_model)


def test_module_search_follows_the_current_version(
    tmp_path: Path,
    corpus: BuiltCorpus,
    embedding_model: EmbeddingModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(tmp_path))
    shutil.copytree(corpus.data_dir / "embeddings", tmp_path / "embeddings")
    build_index(
        DataLayout(tmp_path), embedding_model.model_id, retention_days=50 * 365, today=BUILD_DAY
    )
    newcomer_pmid = sorted(pubmedqa_records(), key=int)[RECALL_SUBSET_SIZE]
    question = pubmedqa_records()[newcomer_pmid]["QUESTION"]
    before = search(question, k=3)

    build_corpus_index(tmp_path, pubmedqa_documents([newcomer_pmid]), embedding_model)
    after = search(question, k=3)

    assert {hit.index_version for hit in before} == {"v000001"}
    assert f"pubmed:{newcomer_pmid}" not in {hit.doc_id for hit in before}
    assert {hit.index_version for hit in after} == {"v000002"}
    assert after[0].doc_id == f"pubmed:{newcomer_pmid}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-05", dt.date(2024, 3, 5)),
        ("2024-03", dt.date(2024, 3, 1)),
        ("2024", dt.date(2024, 1, 1)),
    ],
)
def test_since_accepts_day_month_and_year(text: str, expected: dt.date) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["2024-13-01", "yesterday", "03/05/2024", ""])
def test_since_rejects_what_is_not_a_date(text: str) -> None:
    with pytest.raises(ValueError, match="not a date"):
        parse_since(text)
