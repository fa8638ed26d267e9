from __future__ import annotations

import pytest

from medkb_assets.index.store import IndexNotFoundError, load_current_index, remove_leftovers


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
