"""The offline demo: the whole pipeline over the committed sample of real PubMed records.

Run with ``make demo`` (or ``python -m medkb_assets.demo``). It reads the NLM files under
``data/samples/pubmed`` instead of calling E-utilities, materializes every topic and day the
sample holds records for through the daily job on the persistent Dagster instance (so the web
UI shows the runs afterwards), builds the index, and prints the top hits of a few searches.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "data" / "samples" / "demo_config.yaml"
DEMO_QUERIES = (
    "mTOR signalling in cancer cell metabolism",
    "inhaled corticosteroid reliever therapy for mild asthma",
    "tuberculosis screening in immigrants",
)


def sample_partitions() -> list[str]:
    """Every ``date|topic`` partition for which the sample holds a matching record."""
    from medkb_assets.config import get_config
    from medkb_assets.sources.html_text import keyword_pattern
    from medkb_assets.sources.pubmed.bulk import record_matches, resolve_files
    from medkb_assets.sources.pubmed.parser import parse_pubmed_file

    config = get_config()
    assert config.pubmed.files is not None
    start = config.start_date.isoformat()
    patterns = {key: keyword_pattern(topic.keywords) for key, topic in config.topics.items()}
    keys = set()
    for path in resolve_files(config.pubmed.files):
        for record in parse_pubmed_file(path).records:
            if not record.entrez_date or record.entrez_date < start:
                continue
            for topic, pattern in patterns.items():
                if record_matches(record, pattern):
                    keys.add(f"{record.entrez_date}|{topic}")
    return sorted(keys)


def main() -> int:
    os.environ.setdefault("MEDKB_CONFIG", str(SAMPLE_CONFIG))
    import dagster as dg

    from medkb_assets.definitions import defs
    from medkb_assets.search import Searcher

    partitions = sample_partitions()
    print(f"medkb demo: {len(partitions)} topic/day partitions in the sample", flush=True)
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("daily_update")
    started = time.monotonic()
    for number, partition_key in enumerate(partitions, start=1):
        result = job.execute_in_process(
            partition_key=partition_key, instance=instance, raise_on_error=True
        )
        print(f"  [{number}/{len(partitions)}] {partition_key}: {result.dagster_run.status.value}")

    index_job = defs.resolve_implicit_global_asset_job_def()
    index_job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("faiss_index")], raise_on_error=True
    )
    print(f"pipeline done in {time.monotonic() - started:.0f}s\n")

    searcher = Searcher.open()
    for query in DEMO_QUERIES:
        print(f"search: {query!r} (index {searcher.version})")
        for hit in searcher.search(query, k=3):
            print(f"  {hit.score:.3f}  {hit.doc_id:<18} {hit.title[:90]}")
            print(f"         {hit.date or ''}  {hit.url}  topics: {', '.join(hit.topics)}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
