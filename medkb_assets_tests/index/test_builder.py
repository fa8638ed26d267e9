from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from medkb_assets.embeddings.cache import (
    embed_partition,
    embeddings_partition_path,
    model_embeddings_dir,
)
from medkb_assets.embeddings.model import EmbeddingModel, load_embedding_model
from medkb_assets.index.builder import BuildStats, build_index
from medkb_assets.index.store import (
    list_versions,
    load_current_index,
    read_current_version,
)
from medkb_assets.index.verify import verify_index
from medkb_assets.storage import DataLayout, PartitionRef
from medkb_assets_tests.embeddings.pubmedqa_documents import (
    FETCHED_AT,
    Abstract,
    document_row,
    pubmedqa_abstracts,
    write_documents,
)

REPO_ROOT = Path(__file__).parents[2]
TODAY = dt.date(2026, 11, 5)
DAY_1 = PartitionRef("2026-11-01", "diabetes")
DAY_2 = PartitionRef("2026-11-02", "diabetes")
ONCOLOGY_DAY_2 = PartitionRef("2026-11-02", "oncology")


def _embed(
    layout: DataLayout, partition: PartitionRef, rows: list[dict], model: EmbeddingModel
) -> None:
    embed_partition(write_documents(layout, partition, rows), layout, partition, model)


def _build(layout: DataLayout, model: EmbeddingModel, **options) -> BuildStats:
    options.setdefault("retention_days", 730)
    options.setdefault("today", TODAY)
    return build_index(layout, model.model_id, **options)


def _doc_id(abstract: Abstract) -> str:
    return f"pubmed:{abstract.pmid}"


def _manifest_rows(layout: DataLayout) -> dict[str, dict]:
    manifest = load_current_index(layout.index_dir).manifest
    return {row["doc_id"]: row for row in manifest.to_dict("records")}


def _stored_vector(layout: DataLayout, doc_id: str) -> np.ndarray:
    loaded = load_current_index(layout.index_dir)
    vector_id = int(loaded.manifest.set_index("doc_id").loc[doc_id, "vector_id"])
    return loaded.index.reconstruct(vector_id)


def test_first_build_indexes_every_live_document_and_passes_verification(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:12]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts], embedding_model)

    stats = _build(layout, embedding_model)

    loaded = load_current_index(layout.index_dir)
    assert (stats.version, stats.changed, stats.vectors, stats.added) == ("v000001", True, 12, 12)
    assert stats.parent_version is None
    assert loaded.version == "v000001"
    assert sorted(loaded.manifest["doc_id"]) == sorted(_doc_id(a) for a in abstracts)
    assert loaded.summary["model_id"] == embedding_model.model_id
    assert loaded.summary["vectors"] == loaded.index.ntotal == 12
    assert verify_index(loaded, embedding_model) == []


def test_unchanged_rebuild_reads_nothing_and_publishes_no_new_version(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:6]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts], embedding_model)
    _build(layout, embedding_model)

    again = _build(layout, embedding_model)

    assert (again.changed, again.version, again.partitions_consumed) == (False, "v000001", 0)
    assert (again.added, again.replaced, again.removed) == (0, 0, 0)
    assert list_versions(layout.index_dir) == ["v000001"]


def test_new_partition_adds_only_its_new_documents_keeping_vector_ids(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:10]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts[:6]], embedding_model)
    _build(layout, embedding_model)
    ids_before = {d: row["vector_id"] for d, row in _manifest_rows(layout).items()}

    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts[6:]], embedding_model)
    stats = _build(layout, embedding_model)

    ids_after = {d: row["vector_id"] for d, row in _manifest_rows(layout).items()}
    assert (stats.version, stats.parent_version, stats.partitions_consumed) == (
        "v000002",
        "v000001",
        1,
    )
    assert (stats.added, stats.replaced, stats.removed, stats.vectors) == (4, 0, 0, 10)
    assert {d: ids_after[d] for d in ids_before} == ids_before
    assert len(set(ids_after.values())) == 10


def test_changed_abstract_replaces_its_vector_under_the_same_doc_id(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:6]
    rows = [document_row(a, DAY_1) for a in abstracts]
    _embed(layout, DAY_1, rows, embedding_model)
    _build(layout, embedding_model)
    revised = _doc_id(abstracts[1])
    old_row = _manifest_rows(layout)[revised]
    old_vector = _stored_vector(layout, revised)

    rows[1] = document_row(
        abstracts[1],
        DAY_1,
        text="Retraction and replacement: " + abstracts[1].text,
        fetched_at=FETCHED_AT + dt.timedelta(days=2),
    )
    _embed(layout, DAY_1, rows, embedding_model)
    stats = _build(layout, embedding_model)

    new_row = _manifest_rows(layout)[revised]
    assert (stats.added, stats.replaced, stats.removed, stats.vectors) == (0, 1, 0, 6)
    assert new_row["vector_id"] == old_row["vector_id"]
    assert new_row["content_hash"] == rows[1]["content_hash"] != old_row["content_hash"]
    assert not np.allclose(_stored_vector(layout, revised), old_vector)
    assert verify_index(load_current_index(layout.index_dir), embedding_model) == []


def test_retracted_paper_leaves_the_index(tmp_path, embedding_model: EmbeddingModel) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:6]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts], embedding_model)
    _build(layout, embedding_model)

    later = FETCHED_AT + dt.timedelta(days=1)
    notice = document_row(abstracts[0], DAY_2, retracted=True, fetched_at=later)
    _embed(layout, DAY_2, [notice], embedding_model)
    stats = _build(layout, embedding_model)

    assert (stats.removed, stats.vectors) == (1, 5)
    assert _doc_id(abstracts[0]) not in _manifest_rows(layout)
    assert verify_index(load_current_index(layout.index_dir), embedding_model) == []


def test_deleted_citation_leaves_and_an_older_copy_does_not_bring_it_back(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:6]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts], embedding_model)
    _build(layout, embedding_model)
    later = FETCHED_AT + dt.timedelta(days=1)
    tombstone = document_row(abstracts[2], DAY_2, deleted=True, fetched_at=later)
    _embed(layout, DAY_2, [tombstone], embedding_model)
    stats = _build(layout, embedding_model)

    stale_copy = [document_row(abstracts[2], ONCOLOGY_DAY_2, fetched_at=FETCHED_AT)]
    _embed(layout, ONCOLOGY_DAY_2, stale_copy, embedding_model)
    after_stale_copy = _build(layout, embedding_model)

    assert (stats.removed, stats.vectors) == (1, 5)
    assert after_stale_copy.vectors == 5
    assert _doc_id(abstracts[2]) not in _manifest_rows(layout)


def test_documents_older_than_retention_leave_the_index(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:6]
    rows = [document_row(a, DAY_1) for a in abstracts[:4]]
    rows += [document_row(a, DAY_1, entrez_date="2020-03-01") for a in abstracts[4:]]
    _embed(layout, DAY_1, rows, embedding_model)
    first = _build(layout, embedding_model, retention_days=10_000)

    expired = _build(layout, embedding_model, retention_days=365)

    assert first.vectors == 6
    assert (expired.changed, expired.removed, expired.vectors) == (True, 2, 4)
    assert set(_manifest_rows(layout)) == {_doc_id(a) for a in abstracts[:4]}


def test_pmid_under_two_topics_is_one_vector_listing_both_topics_and_partitions(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:6]
    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts[:4]], embedding_model)
    _embed(
        layout,
        ONCOLOGY_DAY_2,
        [document_row(a, ONCOLOGY_DAY_2) for a in abstracts[2:]],
        embedding_model,
    )

    stats = _build(layout, embedding_model)

    rows = _manifest_rows(layout)
    shared = rows[_doc_id(abstracts[3])]
    assert stats.vectors == len(rows) == 6
    assert list(shared["topics"]) == ["diabetes", "oncology"]
    assert list(shared["partitions"]) == [DAY_2.key, ONCOLOGY_DAY_2.key]
    assert list(rows[_doc_id(abstracts[0])]["topics"]) == ["diabetes"]


def test_document_dropped_from_a_rewritten_partition_leaves_unless_another_lists_it(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:6]
    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts], embedding_model)
    shared = [document_row(abstracts[5], ONCOLOGY_DAY_2)]
    _embed(layout, ONCOLOGY_DAY_2, shared, embedding_model)
    _build(layout, embedding_model)

    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts[:4]], embedding_model)
    stats = _build(layout, embedding_model)

    rows = _manifest_rows(layout)
    assert (stats.removed, stats.vectors, stats.partitions_consumed) == (1, 5, 1)
    assert _doc_id(abstracts[4]) not in rows
    kept = rows[_doc_id(abstracts[5])]
    assert (list(kept["topics"]), list(kept["partitions"])) == (["oncology"], [ONCOLOGY_DAY_2.key])


def test_model_change_starts_a_fresh_index_that_mixes_no_vectors(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:5]
    documents = write_documents(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts])
    embed_partition(documents, layout, DAY_1, embedding_model)
    _build(layout, embedding_model)

    # The same weights with a shorter input window: a different model, sharing the 90 MB file.
    variant_dir = tmp_path / "minilm-128"
    shutil.copytree(
        embedding_model.path, variant_dir, ignore=shutil.ignore_patterns("*.safetensors")
    )
    (variant_dir / "model.safetensors").symlink_to(embedding_model.path / "model.safetensors")
    config = json.loads((variant_dir / "sentence_bert_config.json").read_text())
    (variant_dir / "sentence_bert_config.json").write_text(
        json.dumps({**config, "max_seq_length": 128})
    )
    variant = load_embedding_model(str(variant_dir))
    variant_stats = embed_partition(documents, layout, DAY_1, variant)

    stats = _build(layout, variant)

    loaded = load_current_index(layout.index_dir)
    assert variant.model_id != embedding_model.model_id
    assert variant_stats.embedded == 5
    assert model_embeddings_dir(layout, variant.model_id) != model_embeddings_dir(
        layout, embedding_model.model_id
    )
    assert (stats.version, stats.parent_version, stats.added) == ("v000002", None, 5)
    assert loaded.summary["model_id"] == variant.model_id
    assert verify_index(loaded, variant) == []
    assert verify_index(loaded, embedding_model) != []


def test_hnsw_index_builds_and_retrieves_a_stored_document_first(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:20]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts[:15]], embedding_model)
    _build(layout, embedding_model, index_type="hnsw")
    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts[15:]], embedding_model)
    later = FETCHED_AT + dt.timedelta(days=1)
    _embed(
        layout,
        ONCOLOGY_DAY_2,
        [document_row(abstracts[0], ONCOLOGY_DAY_2, retracted=True, fetched_at=later)],
        embedding_model,
    )

    stats = _build(layout, embedding_model, index_type="hnsw")

    loaded = load_current_index(layout.index_dir)
    assert loaded.summary["index_type"] == "hnsw"
    assert (stats.added, stats.removed, stats.vectors) == (5, 1, 19)
    query = embedding_model.encode_queries([abstracts[7].title])
    _, hits = loaded.index.search(query, 1)
    by_id = loaded.manifest.set_index("vector_id")["doc_id"]
    assert by_id[int(hits[0][0])] == _doc_id(abstracts[7])
    assert verify_index(loaded, embedding_model) == []


def test_auto_index_type_is_exact_until_the_corpus_outgrows_the_limit(
    tmp_path, embedding_model: EmbeddingModel, monkeypatch
) -> None:
    monkeypatch.setattr("medkb_assets.index.builder.AUTO_EXACT_LIMIT", 10)
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:14]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts[:8]], embedding_model)

    small = _build(layout, embedding_model)
    unchanged = _build(layout, embedding_model)
    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts[8:]], embedding_model)
    grown = _build(layout, embedding_model)

    assert (small.index_type, small.vectors) == ("flat", 8)
    assert not unchanged.changed
    assert (grown.index_type, grown.vectors, grown.added) == ("hnsw", 14, 6)
    loaded = load_current_index(layout.index_dir)
    assert loaded.summary["index_type"] == "hnsw"
    assert verify_index(loaded, embedding_model) == []


def test_only_the_newest_versions_are_kept(tmp_path, embedding_model: EmbeddingModel) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:4]
    for day, abstract in enumerate(abstracts, start=1):
        partition = PartitionRef(f"2026-11-0{day}", "diabetes")
        _embed(layout, partition, [document_row(abstract, partition)], embedding_model)
        _build(layout, embedding_model, keep_versions=2)

    assert list_versions(layout.index_dir) == ["v000003", "v000004"]
    assert read_current_version(layout.index_dir) == "v000004"
    assert load_current_index(layout.index_dir).index.ntotal == 4


_BUILD_IN_SUBPROCESS = textwrap.dedent(
    """
    import datetime as dt, os, signal, sys, time
    from pathlib import Path
    from medkb_assets.index.builder import build_index
    from medkb_assets.storage import DataLayout

    root, model_id, action, step = sys.argv[1:5]

    def hook(reached):
        if reached != step:
            return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        Path(root, "holding-lock").touch()
        time.sleep(2)

    stats = build_index(DataLayout(Path(root)), model_id, 730, dt.date(2026, 11, 5),
                        publish_hook=hook)
    print(stats.version)
    """
)


def _builder_process(root: Path, model_id: str, action: str, step: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _BUILD_IN_SUBPROCESS, str(root), model_id, action, step],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("step", ["temp_written", "renamed", "pointer_staged"])
def test_builder_killed_during_publish_leaves_the_previous_version_loadable(
    tmp_path, embedding_model: EmbeddingModel, step: str
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:10]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts[:6]], embedding_model)
    _build(layout, embedding_model)
    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts[6:]], embedding_model)

    crashed = _builder_process(tmp_path, embedding_model.model_id, "kill", step)
    crashed.communicate(timeout=120)

    survivor = load_current_index(layout.index_dir)
    assert crashed.returncode == -signal.SIGKILL
    assert (survivor.version, survivor.index.ntotal) == ("v000001", 6)
    assert verify_index(survivor, embedding_model) == []

    recovered = _build(layout, embedding_model)

    loaded = load_current_index(layout.index_dir)
    assert (recovered.version, recovered.added, recovered.vectors) == ("v000002", 4, 10)
    assert loaded.version == "v000002"
    assert verify_index(loaded, embedding_model) == []
    assert sorted(entry.name for entry in layout.index_dir.iterdir()) == [
        ".lock",
        "CURRENT",
        "PUBLISHED",
        "v000001",
        "v000002",
    ]


def test_concurrent_builders_take_turns_and_lose_no_update(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path / "data")
    abstracts = pubmedqa_abstracts()[:12]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts[:5]], embedding_model)
    _build(layout, embedding_model)
    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts[5:9]], embedding_model)
    # Embedded ahead, elsewhere, so it lands in one copy while the first builder holds the lock.
    staging = DataLayout(tmp_path / "staging")
    late_rows = [document_row(a, ONCOLOGY_DAY_2) for a in abstracts[9:]]
    _embed(staging, ONCOLOGY_DAY_2, late_rows, embedding_model)
    late_file = embeddings_partition_path(staging, embedding_model.model_id, ONCOLOGY_DAY_2)

    first = _builder_process(layout.root, embedding_model.model_id, "pause", "temp_written")
    deadline = time.monotonic() + 120
    while not (layout.root / "holding-lock").exists():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    target = embeddings_partition_path(layout, embedding_model.model_id, ONCOLOGY_DAY_2)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(late_file, target)
    second = _build(layout, embedding_model)
    first_output, first_errors = first.communicate(timeout=120)

    loaded = load_current_index(layout.index_dir)
    assert first.returncode == 0, first_errors
    assert first_output.strip() == "v000002"
    assert second.build_seconds > 0.5
    assert (second.version, second.parent_version, second.added) == ("v000003", "v000002", 3)
    assert loaded.index.ntotal == 12
    assert sorted(loaded.manifest["doc_id"]) == sorted(_doc_id(a) for a in abstracts)


def test_rollback_serves_an_earlier_version_and_the_next_build_reuses_no_name(
    tmp_path, embedding_model: EmbeddingModel
) -> None:
    layout = DataLayout(tmp_path)
    abstracts = pubmedqa_abstracts()[:9]
    _embed(layout, DAY_1, [document_row(a, DAY_1) for a in abstracts[:5]], embedding_model)
    _build(layout, embedding_model)
    _embed(layout, DAY_2, [document_row(a, DAY_2) for a in abstracts[5:7]], embedding_model)
    _build(layout, embedding_model)

    completed = subprocess.run(
        [sys.executable, "-m", "medkb_assets.cli", "rollback", "v000001"],
        env={**os.environ, "MEDKB_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    rolled_back = load_current_index(layout.index_dir)
    _embed(
        layout,
        ONCOLOGY_DAY_2,
        [document_row(a, ONCOLOGY_DAY_2) for a in abstracts[7:]],
        embedding_model,
    )
    after = _build(layout, embedding_model)

    assert completed.stdout.strip() == "CURRENT: v000002 -> v000001"
    assert (rolled_back.version, rolled_back.index.ntotal) == ("v000001", 5)
    assert after.version == "v000003"
    assert after.vectors == 9
    assert list_versions(layout.index_dir) == ["v000001", "v000002", "v000003"]
    refused = subprocess.run(
        [sys.executable, "-m", "medkb_assets.cli", "rollback", "v000042"],
        env={**os.environ, "MEDKB_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert "available: v000001, v000002, v000003" in refused.stderr
