"""Dagster resources: the clients and the model the assets share.

Secrets (``NCBI_API_KEY``) reach resources through :class:`dagster.EnvVar`, so run config and the
UI only ever show the variable's name. Heavy libraries load on first use, not at import.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from medkb_assets.embeddings.model import MODEL_ENV_VAR, EmbeddingModel, load_embedding_model
from medkb_assets.sources.http import RetryPolicy
from medkb_assets.sources.pubmed.client import EutilsClient
from medkb_assets.storage import DataLayout, data_dir

NCBI_URL_ENV_VAR = "NCBI_EUTILS_URL"
NCBI_KEY_ENV_VAR = "NCBI_API_KEY"
NCBI_EMAIL_ENV_VAR = "NCBI_EMAIL"


class NcbiResource(dg.ConfigurableResource):
    """Settings for NCBI E-utilities; builds a paced, retrying :class:`EutilsClient`.

    Attributes:
        base_url: E-utilities base URL; empty means ``NCBI_EUTILS_URL`` or NCBI's public one.
        api_key: NCBI API key (give it as ``EnvVar("NCBI_API_KEY")``), raising the rate to 10/s.
        email: contact address NCBI asks every client to send.
        timeout_seconds: connect and read timeout per request.
        max_retries: retries of 429, 5xx, timeouts and dropped connections per request.
    """

    base_url: str | None = None
    api_key: str | None = None
    email: str | None = None
    timeout_seconds: float = 60.0
    max_retries: int = 6

    def client(self) -> EutilsClient:
        return EutilsClient(
            base_url=self.base_url or os.environ.get(NCBI_URL_ENV_VAR) or None,
            api_key=self.api_key or None,
            email=self.email or os.environ.get(NCBI_EMAIL_ENV_VAR) or None,
            timeout=self.timeout_seconds,
            retry=RetryPolicy(max_retries=self.max_retries),
        )


class PublicHealthResource(dg.ConfigurableResource):
    """Retry settings for the WHO, CDC and MedlinePlus clients (endpoints come from the env).

    Attributes:
        max_retries: retries of 429, 5xx, timeouts and dropped connections per request before the
            source is recorded as unavailable for the partition.
        base_delay_seconds: the first backoff; each retry doubles it, with full jitter.
    """

    max_retries: int = 5
    base_delay_seconds: float = 0.5

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, base_delay=self.base_delay_seconds)


class EmbeddingModelResource(dg.ConfigurableResource):
    """The sentence-transformer, loaded once per process on first use.

    Attributes:
        model_name: a sentence-transformers name or path; empty means ``MEDKB_EMBEDDING_MODEL``
            or the bundled all-MiniLM-L6-v2.
        batch_size: texts per forward pass.
    """

    model_name: str | None = None
    batch_size: int = 64
    _model: EmbeddingModel | None = PrivateAttr(default=None)

    def get_model(self) -> EmbeddingModel:
        if self._model is None:
            self._model = load_embedding_model(
                self.model_name or os.environ.get(MODEL_ENV_VAR) or None
            )
        return self._model


class DataDirResource(dg.ConfigurableResource):
    """Where medkb keeps its files; empty means ``MEDKB_DATA_DIR`` or ``data/``."""

    path: str | None = None

    def layout(self) -> DataLayout:
        return DataLayout(root=Path(self.path).resolve() if self.path else data_dir())


def ncbi_resource_from_env() -> NcbiResource:
    """The NCBI resource the code location uses, with the key as an EnvVar only when set."""
    return NcbiResource(
        api_key=dg.EnvVar(NCBI_KEY_ENV_VAR) if os.environ.get(NCBI_KEY_ENV_VAR) else None,
    )
