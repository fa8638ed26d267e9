"""Measures ``medkb search`` latency per query, query embedding included, on a 100k-vector index.

The index body is random unit vectors (384-d, the default model's size): latency of a flat
inner-product search depends on the number and size of vectors, not on their content. The
queries are real PubMedQA questions, embedded with the real model for every query, exactly as
``Searcher.search`` does for a user. Run from the repository root::

    python benchmarks/search_latency.py                    # 100,000 vectors, 300 questions
    python benchmarks/search_latency.py --index-type flat  # exact search at any size
    python benchmarks/search_latency.py --check            # exit 1 when a target is missed

Figures depend on the machine and on what else runs on it; the load average is printed with
them. On random vectors an HNSW graph has no neighbourhood structure to exploit, so its figures
here are a pessimistic bound, not what real embeddings give.

Targets: p50 under 15 ms and p99 under 50 ms, unfiltered and with a topic filter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medkb_assets.config import load_config
from medkb_assets.embeddings.model import EmbeddingModel, load_embedding_model
from medkb_assets.index.builder import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_NEIGHBOURS,
    INDEX_TYPES,
    resolve_index_type,
)
from medkb_assets.index.store import MANIFEST_SCHEMA, publish_version, version_name
from medkb_assets.search import Searcher
from medkb_assets.storage import DataLayout

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_QUESTIONS = REPO_ROOT / "medkb_assets_tests" / "fixtures" / "pubmedqa" / "pqal_dev.json"
P50_TARGET_MS = 15.0
P99_TARGET_MS = 50.0
WARM_UP_QUERIES = 20
FILTER_TOPIC = "diabetes"
SOURCES = ("pubmed", "who", "cdc", "medlineplus")
SOURCE_WEIGHTS = (0.85, 0.05, 0.05, 0.05)


def main(argv: list[str] | None = None) -> int:
    """Builds the benchmark index, times the queries and prints the percentiles.

    Args:
        argv: command-line arguments; see ``--help``.

    Returns:
        0, or 1 with ``--check`` when a target is missed.
    """
    args = _parse_args(argv)
    questions = _questions(args.questions, args.queries)
    model = load_embedding_model()
    index_type = resolve_index_type(args.index_type, args.vectors)

    with tempfile.TemporaryDirectory(prefix="medkb-latency-") as scratch:
        started = time.perf_counter()
        allowed = _publish_random_index(Path(scratch), args.vectors, model, args.seed, index_type)
        build_s = time.perf_counter() - started
        torch_threads, faiss_threads = _set_threads(args.threads)
        searcher = Searcher.open(Path(scratch), model=model)

        _emit(
            f"index: {args.vectors:,} random unit vectors ({model.dimension}-d, "
            f"{index_type} from --index-type {args.index_type}, inner product), "
            f"built in {build_s:.1f}s; "
            f"version {searcher.version}"
        )
        _emit(
            f"queries: {len(questions)} real PubMedQA questions, k={args.k}, embedded per query "
            f"with {model.model_id}"
        )
        _emit(
            f"threads: torch {torch_threads}, faiss {faiss_threads}; "
            f"CPUs visible {os.cpu_count()}; "
            f"load average before timing {_load_average()}"
        )
        _emit(
            f"topic filter '{FILTER_TOPIC}' allows {allowed:,} vectors "
            f"({allowed / args.vectors:.0%})"
        )

        encode = _timings(lambda q: model.encode_queries([q]), questions)
        unfiltered = _timings(lambda q: searcher.search(q, args.k), questions)
        filtered = _timings(lambda q: searcher.search(q, args.k, topic=FILTER_TOPIC), questions)

    missed = False
    _emit(f"load average after timing {_load_average()}")
    _emit("")
    _emit(f"{'measure':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'max ms':>9}")
    _emit(_row("query embedding only", encode))
    for label, timings in (("search, unfiltered", unfiltered), ("search, topic filter", filtered)):
        _emit(_row(label, timings))
        missed |= _percentile(timings, 50) >= P50_TARGET_MS
        missed |= _percentile(timings, 99) >= P99_TARGET_MS
    _emit("")
    _emit(
        f"targets: p50 < {P50_TARGET_MS:g} ms, p99 < {P99_TARGET_MS:g} ms: "
        f"{'missed' if missed else 'met'}"
    )
    return 1 if args.check and missed else 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000, help="index size")
    parser.add_argument("--queries", type=int, default=300, help="questions to time")
    parser.add_argument("-k", type=int, default=10, help="hits per query")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's own, one per core, as medkb search runs)",
    )
    parser.add_argument("--index-type", choices=INDEX_TYPES, default="auto")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--seed", type=int, default=20251)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def _set_threads(requested: int | None) -> tuple[int, int]:
    import faiss
    import torch

    # torch and FAISS share one OpenMP runtime, so the last setting wins for both; by default
    # both keep one thread per core, as `medkb search` runs.
    if requested:
        torch.set_num_threads(requested)
        faiss.omp_set_num_threads(requested)
    return torch.get_num_threads(), faiss.omp_get_max_threads()


def _questions(path: Path, count: int) -> list[str]:
    records = json.loads(path.read_text(encoding="utf-8"))
    questions = [records[pmid]["QUESTION"] for pmid in sorted(records, key=int)]
    return questions[:count]


def _publish_random_index(
    data_dir: Path, count: int, model: EmbeddingModel, seed: int, index_type: str
) -> int:
    """Publishes one index version of random vectors; returns how many carry the topic."""
    import faiss

    generator = np.random.default_rng(seed)
    vectors = generator.standard_normal((count, model.dimension), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(count, dtype=np.int64)
    body: Any
    if index_type == "hnsw":
        body = faiss.IndexHNSWFlat(model.dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        body.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        body.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        body = faiss.IndexFlatIP(model.dimension)
    index = faiss.IndexIDMap2(body)
    index.add_with_ids(vectors, ids)

    topic_names = sorted(load_config().topics)
    first_topic = generator.integers(0, len(topic_names), count)
    second_topic = generator.integers(0, len(topic_names), count)
    has_second = generator.random(count) < 0.3
    topics = [
        sorted({topic_names[a], topic_names[b]}) if two else [topic_names[a]]
        for a, b, two in zip(first_topic, second_topic, has_second, strict=True)
    ]
    days = generator.integers(0, 730, count)
    dates = [(dt.date(2024, 1, 1) + dt.timedelta(days=int(day))).isoformat() for day in days]
    sources = generator.choice(SOURCES, size=count, p=SOURCE_WEIGHTS)
    manifest = pa.table(
        {
            "vector_id": ids,
            "doc_id": [f"bench:{vector_id}" for vector_id in ids],
            "content_hash": [f"{vector_id:064x}" for vector_id in ids],
            "source": sources.tolist(),
            "source_id": [str(vector_id) for vector_id in ids],
            "title": [f"Random document {vector_id}" for vector_id in ids],
            "url": [None] * count,
            "published": dates,
            "entrez_date": dates,
            "topics": topics,
            "partitions": [
                [f"{date}|{topic}" for topic in row_topics]
                for date, row_topics in zip(dates, topics, strict=True)
            ],
            "retracted": [False] * count,
            "fetched_at": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * count,
        },
        schema=MANIFEST_SCHEMA,
    )
    summary = {
        "version": version_name(1),
        "parent_version": None,
        "model_id": model.model_id,
        "dimension": model.dimension,
        "metric": "ip",
        "index_type": index_type,
        "vectors": count,
        "added": count,
        "replaced": 0,
        "removed": 0,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "build_seconds": 0.0,
    }

    def write_files(folder: Path) -> None:
        faiss.write_index(index, str(folder / "index.faiss"))
        pq.write_table(manifest, folder / "manifest.parquet")
        (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")

    publish_version(DataLayout(data_dir).index_dir, version_name(1), write_files)
    return sum(FILTER_TOPIC in row_topics for row_topics in topics)


def _timings(run: Callable[[str], object], questions: list[str]) -> list[float]:
    for question in questions[:WARM_UP_QUERIES]:
        run(question)
    timings = []
    for question in questions:
        started = time.perf_counter()
        run(question)
        timings.append((time.perf_counter() - started) * 1000.0)
    return timings


def _load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def _percentile(timings: list[float], percent: float) -> float:
    return float(np.percentile(timings, percent))


def _row(label: str, timings: list[float]) -> str:
    return (
        f"{label:<34}{_percentile(timings, 50):>9.2f}{_percentile(timings, 99):>9.2f}"
        f"{statistics.fmean(timings):>9.2f}{max(timings):>9.2f}"
    )


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
