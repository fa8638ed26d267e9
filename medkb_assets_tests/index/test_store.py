from __future__ import annotations

import pytest

from medkb_assets.index.store import (
    IndexNotFoundError,
    IndexVerificationError,
    load_current_index,
    publish_version,
    read_current_version,
    remove_leftovers,
)


def test_loading_before_any_build_explains_how_to_build_an_index(tmp_path) -> None:
    with pytest.raises(IndexNotFoundError, match="materialize the faiss_index asset"):
        load_current_index(tmp_path / "index")


def test_leftovers_of_crashed_publishes_are_removed_but_published_versions_stay(tmp_path) -> None:
    (tmp_path / "v000001").mkdir()
    (tmp_path / "CURRENT").write_text("v000001\n")
    (tmp_path / "v000002").mkdir()
    (tmp_path / ".tmp-v000003-abc").mkdir()
    (tmp_path / ".tmp-CURRENT-abc").write_text("v000003\n")

    removed = remove_leftovers(tmp_path)

    assert sorted(removed) == [".tmp-CURRENT-abc", ".tmp-v000003-abc", "v000002"]
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["CURRENT", "v000001"]


def test_a_staged_version_that_fails_verification_is_never_published(tmp_path) -> None:
    def write(folder) -> None:
        (folder / "index.faiss").write_bytes(b"staged")

    publish_version(tmp_path, "v000001", write)

    with pytest.raises(IndexVerificationError, match="v000002 not published: 3 vectors, 2 rows"):
        publish_version(tmp_path, "v000002", write, verify=lambda folder: ["3 vectors, 2 rows"])

    assert read_current_version(tmp_path) == "v000001"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["CURRENT", "PUBLISHED", "v000001"]


def test_a_published_version_newer_than_current_survives_leftover_removal(tmp_path) -> None:
    for name in ("v000001", "v000002", "v000003"):
        (tmp_path / name).mkdir()
    (tmp_path / "PUBLISHED").write_text("v000001\nv000002\n")
    (tmp_path / "CURRENT").write_text("v000001\n")  # rolled back from v000002

    removed = remove_leftovers(tmp_path)

    assert removed == ["v000003"]
    assert (tmp_path / "v000002").is_dir()
