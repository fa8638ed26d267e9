"""Checks that a published index is fit to ship: counts agree, vectors are sound, ids resolve.

The ``faiss_index`` asset checks call :func:`check_index`; :func:`verify_index` returns the
same findings as one list of problems for code that only needs pass or fail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkb_assets.embeddings.model import EmbeddingModel
from medkb_assets.index.store import LoadedIndex, load_current_index, stored_vectors

logger = logging.getLogger(__name__)

CHECK_COUNTS = "vector_counts_match"
CHECK_LOADS = "index_loads_and_self_retrieves"
CHECK_FINITE = "no_nan_vectors"
CHECK_DIMENSION = "dimension_matches_model"
CHECK_NAMES = (CHECK_COUNTS, CHECK_LOADS, CHECK_FINITE, CHECK_DIMENSION)

SELF_RETRIEVAL_SAMPLE = 5
# Identical texts under two doc_ids have identical vectors; a tie at the top is not a failure.
_SCORE_TIE = 1e-5
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one named check.

    Attributes:
        passed: whether the check holds.
        message: what was found, in one sentence or a list of problems.
        metadata: numbers behind the verdict.
    """

    passed: bool
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)


def check_index(index_dir: Path, model: EmbeddingModel | None) -> dict[str, CheckOutcome]:
    """Loads the current index version and runs every check on it.

    Args:
        index_dir: the index directory.
        model: the embedding model searches will use; None skips the model comparison.

    Returns:
        One outcome per name in :data:`CHECK_NAMES`. When the index does not load, every check
        fails with the loading error.
    """
    try:
        loaded = load_current_index(index_dir)
    except Exception as error:  # noqa: BLE001 - any loading failure is the finding itself
        message = f"the current index does not load: {error}"
        return {name: CheckOutcome(False, message) for name in CHECK_NAMES}

    version = {"index_version": loaded.version}
    counts = _count_problems(loaded)
    finite = _vector_problems(loaded)
    dimension = _model_problems(loaded, model)
    retrieval = _self_retrieval_problems(loaded)
    return {
        CHECK_COUNTS: _outcome(
            counts,
            "vectors, manifest rows and distinct doc_ids agree",
            {
                **version,
                "vectors": int(loaded.index.ntotal),
                "manifest_rows": len(loaded.manifest),
                "distinct_doc_ids": int(loaded.manifest["doc_id"].nunique()),
            },
        ),
        CHECK_LOADS: _outcome(
            retrieval, "the index loads and stored documents retrieve themselves first", version
        ),
        CHECK_FINITE: _outcome(finite, "every vector is finite and unit length", version),
        CHECK_DIMENSION: _outcome(
            dimension,
            "the index dimension and model are the embedding model's",
            {**version, "dimension": int(loaded.index.d)},
        ),
    }


def verify_index(loaded: LoadedIndex, model: EmbeddingModel | None) -> list[str]:
    """Returns every problem found in a loaded index; an empty list means it may ship.

    Covers: vector count = manifest rows = distinct doc_ids and the ids agree; no NaN,
    infinite or non-unit vectors; the dimension and model id match ``model``; and a sample of
    stored documents each retrieve themselves first when searched with their stored vector.

    Args:
        loaded: the index version to check.
        model: the embedding model searches will use; None skips the model comparison.
    """
    return [
        *_count_problems(loaded),
        *_vector_problems(loaded),
        *_model_problems(loaded, model),
        *_self_retrieval_problems(loaded),
    ]


def _outcome(problems: list[str], success: str, metadata: dict[str, Any]) -> CheckOutcome:
    if problems:
        return CheckOutcome(False, "; ".join(problems), metadata)
    return CheckOutcome(True, success, metadata)


def _count_problems(loaded: LoadedIndex) -> list[str]:
    problems = []
    manifest = loaded.manifest
    vectors = int(loaded.index.ntotal)
    distinct = int(manifest["doc_id"].nunique())
    if not vectors == len(manifest) == distinct:
        problems.append(
            f"{vectors} vectors, {len(manifest)} manifest rows, {distinct} distinct doc_ids"
        )
    if manifest["vector_id"].duplicated().any():
        problems.append("the manifest repeats vector ids")
    ids, _ = stored_vectors(loaded.index)
    if set(ids.tolist()) != set(manifest["vector_id"].tolist()):
        problems.append("the index ids are not the manifest's vector ids")
    if "retracted" in manifest and manifest["retracted"].fillna(False).astype(bool).any():
        problems.append("the manifest lists retracted documents")
    return problems


def _vector_problems(loaded: LoadedIndex) -> list[str]:
    _, vectors = stored_vectors(loaded.index)
    if len(vectors) == 0:
        return []
    problems = []
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        problems.append(f"{int((~finite).sum())} vectors hold NaN or infinity")
    norms = np.linalg.norm(vectors[finite], axis=1)
    off = int((np.abs(norms - 1.0) > _NORM_TOLERANCE).sum())
    if off:
        problems.append(f"{off} vectors are not L2-normalised")
    return problems


def _model_problems(loaded: LoadedIndex, model: EmbeddingModel | None) -> list[str]:
    problems = []
    if int(loaded.summary.get("dimension", loaded.index.d)) != int(loaded.index.d):
        problems.append(
            f"summary says {loaded.summary.get('dimension')}-d, index is {loaded.index.d}-d"
        )
    if model is None:
        return problems
    if int(loaded.index.d) != model.dimension:
        problems.append(f"index is {loaded.index.d}-d but {model.model_id} is {model.dimension}-d")
    if loaded.summary.get("model_id") != model.model_id:
        problems.append(
            f"index was built with {loaded.summary.get('model_id')}, searches use {model.model_id}"
        )
    return problems


def _self_retrieval_problems(loaded: LoadedIndex) -> list[str]:
    ids, vectors = stored_vectors(loaded.index)
    if len(ids) == 0:
        return []
    positions = np.unique(np.linspace(0, len(ids) - 1, num=SELF_RETRIEVAL_SAMPLE).astype(int))
    depth = min(10, len(ids))
    scores, hits = loaded.index.search(np.ascontiguousarray(vectors[positions]), depth)
    problems = []
    for row, position in enumerate(positions):
        vector_id = int(ids[position])
        tied = hits[row][scores[row] >= scores[row][0] - _SCORE_TIE]
        if vector_id not in tied.tolist():
            problems.append(
                f"vector {vector_id} does not retrieve itself first (top: {hits[row][0]})"
            )
    return problems
