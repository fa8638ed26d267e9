"""Measures the embedding stage against the bare model, and the cost of an unchanged rerun.

Run from the repository root::

    python benchmarks/embed_throughput.py [--partition-size 200] [--data-dir DIR]

The texts are real: the 500 PubMedQA abstracts and their 500 long answers from the test
fixtures, plus the abstracts of the PubMed XML fixtures. They are written as ``documents``
partitions in a scratch data directory, then

1. for each partition in turn, the bare model encodes its texts in one ``encode`` call (the
   ceiling) and ``embed_partition`` embeds it end to end (read, cache lookup, encode, write);
   the two alternate which goes first, so load from other processes on the machine weighs on
   both alike;
2. ``build_index`` builds the first index version;
3. both stages run again over the unchanged partitions, which should cost next to nothing.

Figures print one per line. Targets: pipeline / bare throughput >= 0.9, and
unchanged rerun / first run time < 0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import defusedxml.ElementTree as ElementTree
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from medkb_assets.documents.schema import DOCUMENT_SCHEMA  # noqa: E402
from medkb_assets.embeddings.cache import embed_partition  # noqa: E402
from medkb_assets.embeddings.model import document_text, load_embedding_model  # noqa: E402
from medkb_assets.index.builder import build_index  # noqa: E402
from medkb_assets.storage import DataLayout, PartitionRef  # noqa: E402

FIXTURES = REPO_ROOT / "medkb_assets_tests" / "fixtures"
PUBMEDQA = FIXTURES / "pubmedqa" / "pqal_dev.json"
PUBMED_XML = [
    FIXTURES / "pubmed" / "pubMR_pubmed_result_93articles.xml",
    FIXTURES / "pubmed" / "pubmed-29768149.xml",
    *sorted((FIXTURES / "pubmed" / "single_pmid").glob("*.xml")),
]
BATCH_SIZE = 64
TODAY = dt.date(2026, 11, 5)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def real_texts() -> list[tuple[str, str, str]]:
    """Returns ``(label, title, text)`` for every distinct real text available."""
    found: dict[str, tuple[str, str, str]] = {}
    counts: dict[str, int] = {}

    def keep(label: str, title: str, text: str) -> None:
        key = hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()
        if text.strip() and key not in found:
            found[key] = (label, title, text)
            kind = label.partition(":")[0]
            counts[kind] = counts.get(kind, 0) + 1

    records = json.loads(PUBMEDQA.read_text(encoding="utf-8"))
    for pmid, record in sorted(records.items()):
        keep(f"pubmedqa:{pmid}", record["QUESTION"], " ".join(record["CONTEXTS"]))
    for pmid, record in sorted(records.items()):
        keep(f"pubmedqa-answer:{pmid}", "", record["LONG_ANSWER"])
    for path in PUBMED_XML:
        for pmid, title, abstract in _pubmed_abstracts(path):
            keep(f"pubmed:{pmid}", title, abstract)

    say("texts used:")
    say(f"  pubmedqa abstracts (title = question): {counts.get('pubmedqa', 0)}")
    say(f"  pubmedqa long answers: {counts.get('pubmedqa-answer', 0)}")
    say(f"  PubMed XML fixture abstracts: {counts.get('pubmed', 0)} from {len(PUBMED_XML)} files")
    say(f"  distinct texts: {len(found)}")
    return list(found.values())


def _pubmed_abstracts(path: Path) -> Iterator[tuple[str, str, str]]:
    if not path.exists():
        return
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return
    for article in root.iter("PubmedArticle"):
        pmid = article.findtext(".//PMID") or ""
        title_node = article.find(".//ArticleTitle")
        title = "".join(title_node.itertext()).strip() if title_node is not None else ""
        abstract = " ".join(
            "".join(node.itertext()).strip() for node in article.iter("AbstractText")
        )
        if abstract:
            yield pmid, title, abstract


def write_partitions(
    layout: DataLayout, texts: list[tuple[str, str, str]], partition_size: int
) -> list[tuple[PartitionRef, Path]]:
    fetched_at = dt.datetime(2026, 11, 4, 6, 0, tzinfo=dt.UTC)
    partitions = []
    for number, start in enumerate(range(0, len(texts), partition_size)):
        partition = PartitionRef((TODAY - dt.timedelta(days=number + 1)).isoformat(), "benchmark")
        rows = []
        for label, title, text in texts[start : start + partition_size]:
            source, _, source_id = label.partition(":")
            rows.append(
                {
                    "doc_id": label,
                    "source": source,
                    "source_id": source_id,
                    "title": title,
                    "text": text,
                    "published": partition.date,
                    "entrez_date": partition.date,
                    "topics": [partition.topic],
                    "retracted": False,
                    "deleted": False,
                    "content_hash": hashlib.sha256(f"{title}\n{text}".encode()).hexdigest(),
                    "fetched_at": fetched_at,
                    "partition": partition.key,
                }
            )
        path = layout.documents_path(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), path)
        partitions.append((partition, path))
    return partitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition-size", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=None)
    arguments = parser.parse_args()

    texts = real_texts()
    scratch = tempfile.TemporaryDirectory(prefix="medkb-bench-")
    layout = DataLayout(arguments.data_dir or Path(scratch.name))
    partitions = write_partitions(layout, texts, arguments.partition_size)
    say(f"partitions: {len(partitions)} of up to {arguments.partition_size} documents")

    started = time.perf_counter()
    model = load_embedding_model()
    say(f"model: {model.model_id} (loaded in {time.perf_counter() - started:.1f}s)")
    model.encode_documents([document_text(title, text) for _, title, text in texts[:32]])

    bare_seconds = pipeline_seconds = 0.0
    encoded = embedded = 0
    for number, (partition, path) in enumerate(partitions):
        inputs = [
            document_text(title, text)
            for title, text in pq.read_table(path, columns=["title", "text"])
            .to_pandas()
            .itertuples(index=False)
        ]
        for step in ("bare", "pipeline") if number % 2 == 0 else ("pipeline", "bare"):
            started = time.perf_counter()
            if step == "bare":
                model.transformer.encode(
                    inputs,
                    batch_size=BATCH_SIZE,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                bare_seconds += time.perf_counter() - started
                encoded += len(inputs)
            else:
                stats = embed_partition(path, layout, partition, model, batch_size=BATCH_SIZE)
                pipeline_seconds += time.perf_counter() - started
                embedded += stats.embedded
    bare_rate = encoded / bare_seconds
    pipeline_rate = embedded / pipeline_seconds

    started = time.perf_counter()
    first_build = build_index(layout, model.model_id, 730, TODAY)
    build_seconds = time.perf_counter() - started

    started = time.perf_counter()
    reembedded = sum(
        embed_partition(path, layout, partition, model).embedded for partition, path in partitions
    )
    rerun_embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second_build = build_index(layout, model.model_id, 730, TODAY)
    rerun_build_seconds = time.perf_counter() - started

    first_total = pipeline_seconds + build_seconds
    rerun_total = rerun_embed_seconds + rerun_build_seconds
    say(f"bare model.encode: {encoded} texts in {bare_seconds:.2f}s = {bare_rate:.1f} docs/s")
    say(
        f"pipeline embed_partition: {embedded} texts in {pipeline_seconds:.2f}s = "
        f"{pipeline_rate:.1f} docs/s"
    )
    say(f"pipeline / bare throughput: {pipeline_rate / bare_rate:.3f} (target >= 0.9)")
    say(
        f"first index build: {first_build.version}, {first_build.vectors} vectors in "
        f"{build_seconds:.3f}s"
    )
    say(f"first run (embed + index): {first_total:.2f}s")
    say(
        f"unchanged rerun: embed {rerun_embed_seconds:.3f}s ({reembedded} embedded), index "
        f"{rerun_build_seconds:.3f}s (new version published: {second_build.changed})"
    )
    say(f"unchanged rerun / first run time: {rerun_total / first_total:.5f} (target < 0.1)")
    scratch.cleanup()


if __name__ == "__main__":
    main()
