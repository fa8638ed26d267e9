from __future__ import annotations

import datetime as dt

import faiss
import numpy as np
import pytest

from medkb_assets.embeddings.cache import embed_partition
from medkb_assets.embeddings.model import EmbeddingModel
from medkb_assets.index.builder import build_index
from medkb_assets.index.store import LoadedIndex, load_current_index, stored_vectors
from medkb_assets.index.verify import CHECK_NAMES, check_index, verify_index
from medkb_assets.storage import DataLayout, PartitionRef
from medkb_assets_tests.embeddings.pubmedqa_documents import (
    document_row,
    pubmedqa_abstracts,
    write_documents,
)

PARTITION = PartitionRef("2026-11-01", "diabetes")


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, embedding_model: EmbeddingModel) -> DataLayout:
    layout = DataLayout(tmp_path_factory.mktemp("verify"))
    rows = [document_row(a, PARTITION) for a in pubmedqa_abstracts()[:8]]
    embed_partition(write_documents(layout, PARTITION, rows), layout, PARTITION, embedding_model)
    build_index(layout, embedding_model.model_id, 730, dt.date(2026, 11, 5))
    return layout


def _with_vectors(loaded: LoadedIndex, vectors: np.ndarray) -> LoadedIndex:
    ids, _ = stored_vectors(loaded.index)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, ids)
    return LoadedIndex(loaded.version, index, loaded.manifest, loaded.summary)


def test_every_check_passes_on_a_freshly_built_index(
    built_index: DataLayout, embedding_model: EmbeddingModel
) -> None:
    outcomes = check_index(built_index.index_dir, embedding_model)

    assert set(outcomes) == set(CHECK_NAMES)
    assert all(outcome.passed for outcome in outcomes.values())
    assert outcomes["vector_counts_match"].metadata["vectors"] == 8


def test_a_manifest_missing_a_row_is_a_count_mismatch(
    built_index: DataLayout, embedding_model: EmbeddingModel
) -> None:
    loaded = load_current_index(built_index.index_dir)
    loaded.manifest = loaded.manifest.iloc[1:]

    problems = verify_index(loaded, embedding_model)

    assert any("8 vectors, 7 manifest rows" in problem for problem in problems)


def test_nan_vectors_are_reported(built_index: DataLayout, embedding_model: EmbeddingModel) -> None:
    loaded = load_current_index(built_index.index_dir)
    _, vectors = stored_vectors(loaded.index)
    vectors[3] = np.nan

    problems = verify_index(_with_vectors(loaded, vectors), embedding_model)

    assert any("1 vectors hold NaN" in problem for problem in problems)


def test_a_document_outranked_by_another_for_its_own_vector_is_reported(
    built_index: DataLayout, embedding_model: EmbeddingModel
) -> None:
    loaded = load_current_index(built_index.index_dir)
    _, vectors = stored_vectors(loaded.index)
    # Under inner product an over-long vector outscores a document's own vector: the failure
    # unnormalised vectors would cause in search.
    vectors[2] *= 50.0

    problems = verify_index(_with_vectors(loaded, vectors), embedding_model)

    assert any("does not retrieve itself first" in problem for problem in problems)
    assert any("not L2-normalised" in problem for problem in problems)


def test_every_check_fails_when_no_index_loads(tmp_path, embedding_model: EmbeddingModel) -> None:
    outcomes = check_index(tmp_path / "index", embedding_model)

    assert set(outcomes) == set(CHECK_NAMES)
    assert not any(outcome.passed for outcome in outcomes.values())
    assert "does not load" in outcomes["index_loads_and_self_retrieves"].message
