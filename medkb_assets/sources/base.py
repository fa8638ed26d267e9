"""What every source hands to the ``documents`` stage, whatever API it came from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SourceDocument:
    """One item of a public-health source, normalised but not yet cleaned.

    ``text`` is plain text (HTML already flattened); ``published`` and ``updated`` are ISO dates.
    """

    source: str
    source_id: str
    title: str
    text: str
    url: str | None
    published: str | None
    updated: str | None = None
    language: str | None = None
    keywords: tuple[str, ...] = ()
    mesh_terms: tuple[str, ...] = ()

    @property
    def doc_id(self) -> str:
        return f"{self.source}:{self.source_id}"


@dataclass(frozen=True)
class RawPayload:
    """One response body kept verbatim, named for the file it is stored in (``page-0001.json``)."""

    name: str
    body: bytes
    request: dict[str, str]


@dataclass
class FetchResult:
    """Everything one source fetch produced for one partition."""

    documents: list[SourceDocument] = field(default_factory=list)
    payloads: list[RawPayload] = field(default_factory=list)
    matched: int = 0  # items the service reported for the query, before the cap
    skipped: int = 0  # malformed items skipped
    skip_reasons: list[str] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    cap_hit: bool = False
