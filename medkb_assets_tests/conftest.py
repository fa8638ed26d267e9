"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import pytest

from medkb_assets.embeddings.model import EmbeddingModel, load_embedding_model


@pytest.fixture(scope="session")
def embedding_model() -> EmbeddingModel:
    """The default embedding model, loaded once per test session (it takes seconds to load)."""
    return load_embedding_model(None)
