from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from medkb_assets.embeddings.cache import (
    embed_partition,
    embeddings_partition_path,
    read_embeddings_partition,
)
from medkb_assets.embeddings.model import EmbeddingModel, document_text
from medkb_assets.storage import DataLayout, PartitionRef
from medkb_assets_tests.embeddings.pubmedqa_documents import (
    document_row,
    pubmedqa_abstracts,
    write_documents,
)

DIABETES = PartitionRef("2026-11-02", "diabetes")
ONCOLOGY = PartitionRef("2026-11-03", "oncology")


def _vectors_by_doc_id(path) -> dict[str, np.ndarray]:
    table, vectors = read_embeddings_partition(path)
    return dict(zip(table.column("doc_id").to_pylist(), vectors, strict=True))


def test_rerunning_an_unchanged_partition_embeds_nothing(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:8]
    documents = write_documents(layout, DIABETES, [document_row(a, DIABETES) for a in abstracts])

    first = embed_partition(documents, layout, DIABETES, embedding_model)
    written = first.path.read_bytes()
    second = embed_partition(documents, layout, DIABETES, embedding_model)

    assert (first.embedded, first.cache_hits) == (8, 0)
    assert first.docs_per_second > 0
    assert (second.embedded, second.cache_hits, second.skipped_unchanged) == (0, 8, True)
    assert second.path.read_bytes() == written


def test_vectors_are_the_models_embedding_of_title_and_text(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:5]
    documents = write_documents(layout, DIABETES, [document_row(a, DIABETES) for a in abstracts])

    stats = embed_partition(documents, layout, DIABETES, embedding_model)

    stored = _vectors_by_doc_id(stats.path)
    expected = embedding_model.encode_documents([document_text(a.title, a.text) for a in abstracts])
    for abstract, vector in zip(abstracts, expected, strict=True):
        np.testing.assert_allclose(stored[f"pubmed:{abstract.pmid}"], vector, atol=1e-5)


def test_text_seen_under_another_topic_and_day_is_not_embedded_again(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:10]
    diabetes = write_documents(layout, DIABETES, [document_row(a, DIABETES) for a in abstracts[:6]])
    oncology = write_documents(layout, ONCOLOGY, [document_row(a, ONCOLOGY) for a in abstracts[3:]])

    embed_partition(diabetes, layout, DIABETES, embedding_model)
    stats = embed_partition(oncology, layout, ONCOLOGY, embedding_model)

    assert (stats.embedded, stats.cache_hits) == (4, 3)
    shared = f"pubmed:{abstracts[4].pmid}"
    np.testing.assert_array_equal(
        _vectors_by_doc_id(stats.path)[shared],
        _vectors_by_doc_id(embeddings_partition_path(layout, stats.model_id, DIABETES))[shared],
    )


def test_a_changed_abstract_is_embedded_again_and_nothing_else(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:6]
    rows = [document_row(a, DIABETES) for a in abstracts]
    documents = write_documents(layout, DIABETES, rows)
    before = _vectors_by_doc_id(embed_partition(documents, layout, DIABETES, embedding_model).path)

    revised_text = abstracts[2].text + " Erratum: the follow-up period was five years."
    rows[2] = document_row(abstracts[2], DIABETES, text=revised_text)
    write_documents(layout, DIABETES, rows)
    stats = embed_partition(documents, layout, DIABETES, embedding_model)

    after = _vectors_by_doc_id(stats.path)
    revised = f"pubmed:{abstracts[2].pmid}"
    assert (stats.embedded, stats.cache_hits) == (1, 5)
    assert not np.allclose(after[revised], before[revised])
    expected = embedding_model.encode_documents([document_text(abstracts[2].title, revised_text)])
    np.testing.assert_allclose(after[revised], expected[0], atol=1e-5)


def test_retracted_and_deleted_rows_stay_flagged_without_a_vector(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:5]
    rows = [document_row(a, DIABETES) for a in abstracts[:3]]
    rows.append(document_row(abstracts[3], DIABETES, retracted=True))
    rows.append(document_row(abstracts[4], DIABETES, deleted=True))
    documents = write_documents(layout, DIABETES, rows)

    stats = embed_partition(documents, layout, DIABETES, embedding_model)

    table = pq.read_table(stats.path)
    vectors = table.column("vector").to_pylist()
    assert (stats.embedded, stats.flagged, stats.rows) == (3, 2, 5)
    assert table.column("retracted").to_pylist() == [False, False, False, True, False]
    assert table.column("deleted").to_pylist() == [False, False, False, False, True]
    assert [vector is None for vector in vectors] == [False, False, False, True, True]
