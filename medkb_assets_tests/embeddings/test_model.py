from __future__ import annotations

import numpy as np

from medkb_assets.embeddings.model import (
    DEFAULT_MODEL_NAME,
    EmbeddingModel,
    document_text,
    load_embedding_model,
    model_digest,
)
from medkb_assets_tests.embeddings.pubmedqa_documents import pubmedqa_abstracts


def test_default_model_is_the_bundled_minilm_with_a_weights_digest_in_its_id(
    embedding_model: EmbeddingModel,
) -> None:
    assert embedding_model.dimension == 384
    assert embedding_model.model_id == f"{DEFAULT_MODEL_NAME}@{model_digest(embedding_model.path)}"
    assert load_embedding_model(None) is embedding_model


def test_documents_are_embedded_as_unit_float32_rows_in_input_order(
    embedding_model: EmbeddingModel,
) -> None:
    abstracts = pubmedqa_abstracts()[:6]
    texts = [document_text(abstract.title, abstract.text) for abstract in abstracts]

    together = embedding_model.encode_documents(texts, batch_size=4)
    one_by_one = np.vstack([embedding_model.encode_documents([text]) for text in texts])

    assert together.shape == (6, 384)
    assert together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, one_by_one, atol=1e-4)


def test_a_question_is_closest_to_the_abstract_it_was_written_about(
    embedding_model: EmbeddingModel,
) -> None:
    abstracts = pubmedqa_abstracts()[:20]
    documents = embedding_model.encode_documents([abstract.text for abstract in abstracts])
    queries = embedding_model.encode_queries([abstract.title for abstract in abstracts])

    best = (queries @ documents.T).argmax(axis=1)

    assert (best == np.arange(20)).mean() >= 0.9


def test_document_text_joins_title_and_body_and_skips_blanks() -> None:
    assert document_text("Insulin resistance", "Body.") == "Insulin resistance\nBody."
    assert document_text("  ", "Body only.") == "Body only."
    assert document_text("Title only", "") == "Title only"


def test_query_vectors_equal_the_document_vectors_of_the_same_text(
    embedding_model: EmbeddingModel,
) -> None:
    texts = ["Is metformin associated with lower cardiovascular mortality?", "asthma"]

    queries = embedding_model.encode_queries(texts)

    assert queries.dtype == np.float32
    assert np.allclose(queries, embedding_model.encode_documents(texts), atol=1e-6)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
