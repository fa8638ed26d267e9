from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from medkb_assets.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

DEFAULT_TOPICS = {
    "diabetes",
    "hypertension",
    "heart_disease",
    "cancer",
    "stroke",
    "dementia",
    "asthma",
    "infectious_outbreaks",
}


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "medkb.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _valid() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


def test_default_configuration_has_the_eight_topics_with_queries_and_sources():
    config = load_config()

    assert set(config.topics) == DEFAULT_TOPICS
    assert config.start_date == dt.date(2025, 1, 1)
    assert config.max_records_per_partition == 5000
    assert all(topic.pubmed_query and topic.keywords for topic in config.topics.values())
    assert all("pubmed" in topic.sources for topic in config.topics.values())


def test_environment_variable_overrides_the_packaged_file(tmp_path, monkeypatch):
    document = _valid()
    document["topics"] = {"lyme_disease": {**document["topics"]["asthma"], "keywords": ["lyme"]}}
    monkeypatch.setenv("MEDKB_CONFIG", str(_write(tmp_path, document)))

    assert list(load_config().topics) == ["lyme_disease"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["topics"]["asthma"].update(quey="x"), "topics.asthma.quey"),
        (lambda d: d["topics"].update({"Heart Disease": d["topics"]["asthma"]}), "topics"),
        (lambda d: d.update(max_records_per_partition=-1), "max_records_per_partition"),
        (lambda d: d.update(start_date="the first of may"), "start_date"),
        (lambda d: d["topics"]["asthma"].update(sources=["pubmed", "twitter"]), "sources"),
        (lambda d: d.update(retention_days=0), "retention_days"),
    ],
)
def test_invalid_field_fails_with_the_file_and_the_field_named(tmp_path, change, field):
    document = _valid()
    change(document)
    path = _write(tmp_path, document)

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert str(path) in str(raised.value)
    assert field in str(raised.value)


def test_unparsable_yaml_and_missing_file_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("topics: [unclosed")

    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="absent.yaml: cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_relative_pubmed_files_are_anchored_at_the_configuration_folder(tmp_path):
    document = _valid()
    document["pubmed"] = {"files": "nlm/*.xml.gz"}

    config = load_config(_write(tmp_path, document))

    assert config.pubmed.files == str(tmp_path.resolve() / "nlm/*.xml.gz")
