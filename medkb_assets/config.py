"""The medkb configuration file: topics, sources, partition start, retention and caps.

The default file ships inside the package; ``MEDKB_CONFIG`` points at another one. The file is
validated when it is loaded, so a typo fails at definition time with the file and the field
named, rather than in the middle of a run.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")
CONFIG_ENV_VAR = "MEDKB_CONFIG"

SourceName = Literal["pubmed", "who", "cdc", "medlineplus"]
SOURCE_NAMES: tuple[SourceName, ...] = ("pubmed", "who", "cdc", "medlineplus")
TOPIC_KEY_PATTERN = re.compile(r"^[a-z0-9_]+$")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicConfig(_Strict):
    """One topic: how to find its literature in each source."""

    pubmed_query: str = Field(min_length=1)
    keywords: tuple[str, ...] = Field(min_length=1)
    sources: tuple[SourceName, ...] = ("pubmed",)

    @field_validator("keywords")
    @classmethod
    def _keywords_not_blank(cls, keywords: tuple[str, ...]) -> tuple[str, ...]:
        if any(not keyword.strip() for keyword in keywords):
            raise ValueError("keywords must not be blank")
        return tuple(keyword.strip() for keyword in keywords)

    @field_validator("sources")
    @classmethod
    def _sources_unique(cls, sources: tuple[SourceName, ...]) -> tuple[SourceName, ...]:
        if len(set(sources)) != len(sources):
            raise ValueError("sources must not repeat")
        return sources


class PubmedConfig(_Strict):
    """PubMed settings: read NLM XML files instead of E-utilities when ``files`` is set.

    A relative ``files`` path is taken relative to the configuration file's folder.
    """

    files: str | None = None


class MedkbConfig(_Strict):
    """The whole configuration file."""

    start_date: dt.date
    retention_days: int = Field(default=730, gt=0)
    max_records_per_partition: int = Field(default=5000, ge=0)
    pubmed: PubmedConfig = PubmedConfig()
    topics: dict[str, TopicConfig] = Field(min_length=1)

    @field_validator("topics")
    @classmethod
    def _topic_keys_are_partition_safe(
        cls, topics: dict[str, TopicConfig]
    ) -> dict[str, TopicConfig]:
        for key in topics:
            if not TOPIC_KEY_PATTERN.match(str(key)):
                raise ValueError(f"topic key {key!r} must match [a-z0-9_]+")
        return topics

    def topics_with_source(self, source: SourceName) -> list[str]:
        """Returns the topic keys that have ``source`` enabled."""
        return [key for key, topic in self.topics.items() if source in topic.sources]


def config_path() -> Path:
    """Returns the configuration file in use: ``MEDKB_CONFIG`` or the packaged default."""
    override = os.environ.get(CONFIG_ENV_VAR)
    return Path(override) if override else DEFAULT_CONFIG_PATH


def load_config(path: Path | str | None = None) -> MedkbConfig:
    """Reads and validates a configuration file.

    Args:
        path: the file to read; defaults to :func:`config_path`.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the file is missing, is not YAML, or a field is invalid. The message names
            the file and every offending field.
    """
    path = Path(path) if path is not None else config_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read configuration: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")

    try:
        config = MedkbConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or '<root>'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise ConfigError(f"{path}: invalid configuration: {problems}") from error

    files = config.pubmed.files
    if files and not Path(files).expanduser().is_absolute():
        anchored = str(path.resolve().parent / files)
        config = config.model_copy(update={"pubmed": PubmedConfig(files=anchored)})
    return config


@lru_cache(maxsize=8)
def _cached_config(path: str, mtime_ns: int) -> MedkbConfig:
    return load_config(path)


def get_config() -> MedkbConfig:
    """Returns the configuration in use, read once per file version."""
    path = config_path()
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as error:
        raise ConfigError(f"{path}: cannot read configuration: {error}") from error
    return _cached_config(str(path), mtime_ns)
