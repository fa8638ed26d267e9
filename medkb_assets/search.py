"""Semantic search over the current FAISS index, with topic, source and date filters.

A :class:`Searcher` loads the index version named by ``index/CURRENT`` and the embedding model
once; each query then costs one embedding and one index search::

    searcher = Searcher.open()
    for hit in searcher.search("metformin and lactic acidosis", k=5, topic="diabetes"):
        print(hit.rank, hit.score, hit.doc_id, hit.title)

Filtered queries are exact on flat indexes: the filter becomes a FAISS ID selector, so the
search ranks only the allowed vectors and returns ``k`` hits whenever ``k`` documents match.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medkb_assets import storage
from medkb_assets.config import SOURCE_NAMES, TOPIC_KEY_PATTERN
from medkb_assets.index.store import IndexNotFoundError, load_current_index, read_current_version
from medkb_assets.storage import DataLayout

if TYPE_CHECKING:
    from medkb_assets.embeddings.model import EmbeddingModel

logger = logging.getLogger(__name__)

__all__ = [
    "IndexNotFoundError",
    "ModelMismatchError",
    "SearchHit",
    "Searcher",
    "search",
]

DEFAULT_K = 10

# Filters repeat across queries (a topic, a cut-off date), and building the selector for a large
# allowed set costs more than the search itself, so a few recent ones are kept.
_SELECTOR_CACHE_SIZE = 32

# An HNSW graph walked under a narrow filter can run out of reachable allowed nodes before it
# finds k of them; below this many allowed vectors an exact pass over just those is cheap.
_EXACT_FALLBACK_MAX_VECTORS = 200_000
_FILTERED_HNSW_EF_SEARCH = 128


class ModelMismatchError(RuntimeError):
    """The index was built with a different embedding model than the one loaded for queries."""


@dataclass(frozen=True)
class SearchHit:
    """One ranked document, with where it came from and which index answered.

    Attributes:
        rank: 1 for the best hit.
        doc_id: stable document key, e.g. ``pubmed:12345678``.
        score: cosine similarity between query and document (inner product of unit vectors).
        title: document title; may be empty.
        source: ``pubmed``, ``who``, ``cdc`` or ``medlineplus``.
        source_id: the identifier inside the source (a PMID for PubMed).
        date: the date filters compare against: the Entrez date when there is one, else the
            publication date, as an ISO string as precise as the source gives; ``None`` if
            neither is known.
        url: link to the document at its source; may be ``None``.
        topics: configured topics the document belongs to.
        partitions: ``YYYY-MM-DD|topic`` partitions the document was collected in.
        index_version: the index version that produced this hit.
    """

    rank: int
    doc_id: str
    score: float
    title: str
    source: str
    source_id: str
    date: str | None
    url: str | None
    topics: tuple[str, ...]
    partitions: tuple[str, ...]
    index_version: str

    def to_dict(self) -> dict[str, Any]:
        """Returns the hit as JSON-ready primitives (tuples become lists)."""
        return {
            "rank": self.rank,
            "doc_id": self.doc_id,
            "score": self.score,
            "title": self.title,
            "source": self.source,
            "source_id": self.source_id,
            "date": self.date,
            "url": self.url,
            "topics": list(self.topics),
            "partitions": list(self.partitions),
            "index_version": self.index_version,
        }


@dataclass(frozen=True)
class _Filter:
    topic: str | None
    source: str | None
    since: dt.date | None

    @property
    def is_empty(self) -> bool:
        return self.topic is None and self.source is None and self.since is None


@dataclass(frozen=True)
class _Selection:
    """The vectors a filter allows, in the form FAISS searches with."""

    allowed: int
    vector_ids: np.ndarray
    params: Any


class Searcher:
    """Answers queries against one loaded index version with one loaded model.

    Build one with :meth:`open`. A searcher never changes version; open a new one (or use the
    module-level :func:`search`, which follows ``CURRENT``) to pick up a newer index.
    """

    def __init__(self, version: str, index: Any, manifest: pd.DataFrame, model: EmbeddingModel):
        """Wraps an index already loaded; prefer :meth:`open`.

        Args:
            version: the index version name, e.g. ``v000007``.
            index: the FAISS index whose ids are the manifest's ``vector_id``.
            manifest: one row per vector, in the columns of the index manifest.
            model: the model whose space the index vectors live in.
        """
        if index.ntotal != len(manifest):
            raise ValueError(
                f"index {version} holds {index.ntotal} vectors but its manifest lists "
                f"{len(manifest)}; the version is damaged, publish a new one"
            )
        self.version = version
        self.model = model
        self._index = index
        self._lock = threading.Lock()
        self._selections: OrderedDict[_Filter, _Selection] = OrderedDict()
        self._load_manifest(manifest)

    @classmethod
    def open(cls, data_dir: Path | None = None, model: EmbeddingModel | None = None) -> Searcher:
        """Loads the current index version and the embedding model.

        Args:
            data_dir: the medkb data directory; defaults to ``MEDKB_DATA_DIR`` or ``data/``.
            model: an already loaded model; defaults to :func:`load_embedding_model`.

        Returns:
            A searcher over the version named by ``index/CURRENT``.

        Raises:
            IndexNotFoundError: no index has been published in that data directory yet.
            ModelMismatchError: the index was built with a different model.
        """
        layout = DataLayout(Path(data_dir) if data_dir is not None else storage.data_dir())
        loaded = load_current_index(layout.index_dir)

        if model is None:
            from medkb_assets.embeddings.model import load_embedding_model

            model = load_embedding_model()
        _check_same_model(loaded.version, loaded.summary, model)

        logger.info(
            "opened index %s (%d vectors) from %s", loaded.version, loaded.index.ntotal, layout.root
        )
        return cls(loaded.version, loaded.index, loaded.manifest, model)

    def __len__(self) -> int:
        return len(self._vector_ids)

    @property
    def topics(self) -> frozenset[str]:
        """Topics carried by at least one document in this index version."""
        return frozenset(self._topic_masks)

    def search(
        self,
        query: str,
        k: int = DEFAULT_K,
        *,
        topic: str | None = None,
        source: str | None = None,
        since: dt.date | None = None,
    ) -> list[SearchHit]:
        """Returns the ``k`` documents closest to ``query`` that pass every given filter.

        Args:
            query: free text; leading and trailing space is ignored.
            k: how many hits to return at most.
            topic: keep documents tagged with this topic.
            source: keep documents from this source.
            since: keep documents whose date (Entrez date, else publication date) is on or after
                this day; a date known only to the month or year counts as its last day.

        Returns:
            Hits best first; fewer than ``k`` only when fewer documents pass the filters.

        Raises:
            ValueError: empty query, ``k`` below 1, or a malformed topic or unknown source.
        """
        return self.search_many([query], k, topic=topic, source=source, since=since)[0]

    def search_many(
        self,
        queries: Sequence[str],
        k: int = DEFAULT_K,
        *,
        topic: str | None = None,
        source: str | None = None,
        since: dt.date | None = None,
    ) -> list[list[SearchHit]]:
        """Answers several queries with one embedding batch and one FAISS call.

        Args:
            queries: free-text queries.
            k: how many hits to return per query at most.
            topic: see :meth:`search`.
            source: see :meth:`search`.
            since: see :meth:`search`.

        Returns:
            One hit list per query, in query order.

        Raises:
            ValueError: see :meth:`search`.
        """
        cleaned = [_validate_query(query) for query in queries]
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        search_filter = _validate_filter(topic, source, since)
        if not cleaned:
            return []

        query_vectors = self.model.encode_queries(cleaned)
        scores, labels = self._search_vectors(query_vectors, k, search_filter)
        return [self._hits(scores[row], labels[row]) for row in range(len(cleaned))]

    def _load_manifest(self, manifest: pd.DataFrame) -> None:
        # Hits are assembled from plain arrays: a pandas row lookup per hit costs more than the
        # FAISS search of a small index.
        self._vector_ids = manifest["vector_id"].to_numpy(dtype=np.int64)
        order = np.argsort(self._vector_ids, kind="stable")
        self._sorted_ids = self._vector_ids[order]
        self._row_of_sorted = order

        self._doc_ids = manifest["doc_id"].to_numpy(dtype=object)
        self._titles = manifest["title"].fillna("").to_numpy(dtype=object)
        self._sources = manifest["source"].to_numpy(dtype=object)
        self._source_ids = manifest["source_id"].astype(str).to_numpy(dtype=object)
        self._urls = manifest["url"].to_numpy(dtype=object)
        self._topic_lists = manifest["topics"].to_numpy(dtype=object)
        self._partition_lists = manifest["partitions"].to_numpy(dtype=object)

        entrez = manifest["entrez_date"].to_numpy(dtype=object)
        published = manifest["published"].to_numpy(dtype=object)
        self._dates = np.array(
            [_present(e) or _present(p) for e, p in zip(entrez, published, strict=True)],
            dtype=object,
        )
        self._date_cutoffs = _latest_days(self._dates)

        self._source_masks = {str(name): self._sources == name for name in pd.unique(self._sources)}
        self._topic_masks = _membership_masks(self._topic_lists)

    def _search_vectors(
        self, query_vectors: np.ndarray, k: int, search_filter: _Filter
    ) -> tuple[np.ndarray, np.ndarray]:
        if search_filter.is_empty:
            return self._index.search(query_vectors, k)

        selection = self._selection(search_filter)
        if selection.allowed == 0:
            empty_scores = np.full((len(query_vectors), k), -np.inf, dtype=np.float32)
            return empty_scores, np.full((len(query_vectors), k), -1, dtype=np.int64)
        if selection.params is None:
            return self._index.search(query_vectors, k)

        scores, labels = self._index.search(query_vectors, k, params=selection.params)
        expected = min(k, selection.allowed)
        short = (labels >= 0).sum(axis=1) < expected
        if short.any() and selection.allowed <= _EXACT_FALLBACK_MAX_VECTORS:
            logger.debug("approximate filtered search fell short; ranking allowed vectors exactly")
            exact_scores, exact_labels = self._exact_search(query_vectors[short], k, selection)
            scores[short], labels[short] = exact_scores, exact_labels
        return scores, labels

    def _exact_search(
        self, query_vectors: np.ndarray, k: int, selection: _Selection
    ) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        allowed_vectors = self._index.reconstruct_batch(selection.vector_ids)
        exact = faiss.IndexFlatIP(allowed_vectors.shape[1])
        exact.add(allowed_vectors)
        scores, positions = exact.search(query_vectors, k)
        labels = np.where(positions >= 0, selection.vector_ids[np.maximum(positions, 0)], -1)
        return scores, labels

    def _selection(self, search_filter: _Filter) -> _Selection:
        with self._lock:
            cached = self._selections.get(search_filter)
            if cached is not None:
                self._selections.move_to_end(search_filter)
                return cached

        selection = self._build_selection(search_filter)
        with self._lock:
            self._selections[search_filter] = selection
            while len(self._selections) > _SELECTOR_CACHE_SIZE:
                self._selections.popitem(last=False)
        return selection

    def _build_selection(self, search_filter: _Filter) -> _Selection:
        mask = np.ones(len(self._vector_ids), dtype=bool)
        if search_filter.topic is not None:
            mask &= self._topic_masks.get(search_filter.topic, False)
        if search_filter.source is not None:
            mask &= self._source_masks.get(search_filter.source, False)
        if search_filter.since is not None:
            mask &= self._date_cutoffs >= np.datetime64(search_filter.since, "D")

        allowed_ids = self._vector_ids[mask]
        if len(allowed_ids) in (0, len(self._vector_ids)):
            return _Selection(len(allowed_ids), allowed_ids, None)

        params = _search_parameters(self._index, _id_selector(allowed_ids))
        return _Selection(len(allowed_ids), allowed_ids, params)

    def _hits(self, scores: np.ndarray, labels: np.ndarray) -> list[SearchHit]:
        found = labels >= 0
        labels, scores = labels[found], scores[found]
        positions = np.searchsorted(self._sorted_ids, labels)
        positions = np.minimum(positions, len(self._sorted_ids) - 1)

        hits: list[SearchHit] = []
        for label, score, position in zip(labels, scores, positions, strict=True):
            if self._sorted_ids[position] != label:
                logger.warning(
                    "index %s returned id %d absent from its manifest", self.version, label
                )
                continue
            row = self._row_of_sorted[position]
            hits.append(
                SearchHit(
                    rank=len(hits) + 1,
                    doc_id=str(self._doc_ids[row]),
                    score=float(score),
                    title=str(self._titles[row]),
                    source=str(self._sources[row]),
                    source_id=str(self._source_ids[row]),
                    date=self._dates[row],
                    url=_present(self._urls[row]),
                    topics=_string_tuple(self._topic_lists[row]),
                    partitions=_string_tuple(self._partition_lists[row]),
                    index_version=self.version,
                )
            )
        return hits


_default_searchers: dict[Path, Searcher] = {}
_default_lock = threading.Lock()


def search(
    query: str,
    k: int = DEFAULT_K,
    *,
    topic: str | None = None,
    source: str | None = None,
    since: dt.date | None = None,
) -> list[SearchHit]:
    """Searches the index of ``MEDKB_DATA_DIR`` with a searcher kept for the whole process.

    The model and index load on the first call. Later calls reuse them and reopen the index
    only when ``index/CURRENT`` names a newer version.

    Args:
        query: free text.
        k: how many hits to return at most.
        topic: see :meth:`Searcher.search`.
        source: see :meth:`Searcher.search`.
        since: see :meth:`Searcher.search`.

    Returns:
        Hits best first.

    Raises:
        IndexNotFoundError: no index has been published yet.
        ModelMismatchError: the index was built with a different model.
        ValueError: see :meth:`Searcher.search`.
    """
    root = storage.data_dir()
    with _default_lock:
        searcher = _default_searchers.get(root)
        current = read_current_version(DataLayout(root).index_dir)
        if searcher is None or searcher.version != current:
            model = searcher.model if searcher is not None else None
            searcher = Searcher.open(root, model=model)
            _default_searchers[root] = searcher
    return searcher.search(query, k, topic=topic, source=source, since=since)


def parse_since(value: str) -> dt.date:
    """Parses a ``--since`` value: ``YYYY-MM-DD``, or ``YYYY-MM`` / ``YYYY`` for the first day.

    Args:
        value: the date as typed.

    Returns:
        The first day the value covers.

    Raises:
        ValueError: the value is not one of those forms or not a real date.
    """
    text = value.strip()
    try:
        if len(text) == 4 and text.isdigit():
            return dt.date(int(text), 1, 1)
        if len(text) == 7 and text[4] == "-":
            return dt.date(int(text[:4]), int(text[5:]), 1)
        return dt.date.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"{value!r} is not a date; use YYYY-MM-DD (or YYYY-MM, YYYY)") from error


def _check_same_model(version: str, summary: dict[str, Any], model: EmbeddingModel) -> None:
    index_model = summary.get("model_id")
    if index_model != model.model_id:
        raise ModelMismatchError(
            f"index {version} was built with embedding model {index_model!r} but the loaded "
            f"model is {model.model_id!r}; set MEDKB_EMBEDDING_MODEL to the index's model or "
            f"rebuild the index with the new one"
        )
    dimension = summary.get("dimension")
    if dimension is not None and int(dimension) != model.dimension:
        raise ModelMismatchError(
            f"index {version} holds {dimension}-dimensional vectors but the model produces "
            f"{model.dimension}"
        )


def _validate_query(query: str) -> str:
    cleaned = query.strip() if isinstance(query, str) else ""
    if not cleaned:
        raise ValueError("the query is empty")
    return cleaned


def _validate_filter(topic: str | None, source: str | None, since: dt.date | None) -> _Filter:
    if topic is not None and not TOPIC_KEY_PATTERN.match(topic):
        raise ValueError(f"topic {topic!r} is not a topic key (lowercase letters, digits, _)")
    if source is not None and source not in SOURCE_NAMES:
        raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCE_NAMES)}")
    if since is not None and not isinstance(since, dt.date):
        raise ValueError(f"since must be a date, got {since!r}")
    if isinstance(since, dt.datetime):
        since = since.date()
    return _Filter(topic=topic, source=source, since=since)


def _present(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _string_tuple(values: Any) -> tuple[str, ...]:
    if values is None or (isinstance(values, float) and np.isnan(values)):
        return ()
    return tuple(str(value) for value in values)


def _latest_days(dates: np.ndarray) -> np.ndarray:
    """Maps ISO date strings to the last day they cover; unknown or malformed ones to NaT."""
    by_text = {text: _latest_day(text) for text in set(dates.tolist())}
    return np.array([by_text[text] for text in dates.tolist()], dtype="datetime64[D]")


def _latest_day(text: str | None) -> np.datetime64:
    if not text:
        return np.datetime64("NaT", "D")
    try:
        if len(text) >= 10:
            return np.datetime64(dt.date.fromisoformat(text[:10]), "D")
        if len(text) == 7:
            return (np.datetime64(text, "M") + 1).astype("datetime64[D]") - 1
        if len(text) == 4:
            return (np.datetime64(text, "Y") + 1).astype("datetime64[D]") - 1
    except ValueError:
        pass
    logger.debug("ignoring unparsable document date %r", text)
    return np.datetime64("NaT", "D")


def _membership_masks(lists: np.ndarray) -> dict[str, np.ndarray]:
    lengths = np.fromiter((len(values) for values in lists), dtype=np.int64, count=len(lists))
    rows = np.repeat(np.arange(len(lists)), lengths)
    if len(rows) == 0:
        return {}
    flat = np.concatenate([np.asarray(values, dtype=object) for values in lists if len(values)])
    codes, names = pd.factorize(flat)

    masks: dict[str, np.ndarray] = {}
    for code, name in enumerate(names):
        mask = np.zeros(len(lists), dtype=bool)
        mask[rows[codes == code]] = True
        masks[str(name)] = mask
    return masks


def _faiss() -> Any:
    # Imported on first use to keep it out of import time; typed loosely because the generated
    # stubs describe the C++ signatures, not the numpy-friendly Python wrappers FAISS installs.
    import faiss

    return faiss


def _id_selector(allowed_ids: np.ndarray) -> Any:
    faiss = _faiss()

    # A bitmap answers membership with one load per candidate, far cheaper to build and to probe
    # than a hash set of the allowed ids, as long as the id range is not much larger than the
    # index; sparse or negative ids fall back to the hash set.
    largest = int(allowed_ids.max())
    if int(allowed_ids.min()) >= 0 and largest < 64 * len(allowed_ids) + (1 << 20):
        bits = np.zeros(largest + 1, dtype=bool)
        bits[allowed_ids] = True
        # The one-argument constructors keep the numpy buffer referenced from the selector.
        return faiss.IDSelectorBitmap(np.packbits(bits, bitorder="little"))

    return faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))


def _search_parameters(index: Any, selector: Any) -> Any:
    faiss = _faiss()

    # FAISS checks the parameter class against the innermost index: HNSW insists on its own
    # subclass, and the id map translates the selector to internal positions on the way down.
    inner = index
    while hasattr(inner, "index"):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        # A filter hides part of the graph's neighbours, so the walk needs a wider beam than an
        # unfiltered query to reach k allowed vectors.
        beam = max(inner.hnsw.efSearch, _FILTERED_HNSW_EF_SEARCH)
        return faiss.SearchParametersHNSW(sel=selector, efSearch=beam)
    return faiss.SearchParameters(sel=selector)
