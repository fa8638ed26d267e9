"""Reading NLM's PubMed baseline and update files instead of calling E-utilities.

NLM publishes PubMed as an annual baseline and daily update files in the same
``PubmedArticleSet`` XML that efetch returns. For a partition, medkb keeps the records whose
Entrez date is the partition's day and whose text matches one of the topic's keywords, and stores
their bytes verbatim (cut out of the file, not re-serialised) so they read exactly like an efetch
response. ``DeleteCitation`` entries carry no date: every partition read from the files keeps
them, and the index removes those PMIDs wherever they were.
"""

from __future__ import annotations

import glob
import gzip
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from medkb_assets.sources.html_text import keyword_pattern
from medkb_assets.sources.pubmed.parser import PubmedRecord, parse_pubmed_xml

logger = logging.getLogger(__name__)

_READ_BYTES = 4 << 20
_RECORD_START = re.compile(rb"<(PubmedArticle|PubmedBookArticle|DeleteCitation)[\s>]")
_SET_HEADER = b'<?xml version="1.0" ?>\n<PubmedArticleSet>\n'
_SET_FOOTER = b"\n</PubmedArticleSet>\n"


@dataclass
class BulkSelection:
    """The records one partition takes from a set of NLM files."""

    files: list[str] = field(default_factory=list)
    scanned: int = 0
    matched_total: int = 0  # every match, including those past the cap
    matched_pmids: list[str] = field(default_factory=list)
    deleted_pmids: list[str] = field(default_factory=list)
    skipped: int = 0
    cap_hit: bool = False
    chunks: list[bytes] = field(default_factory=list)

    def as_xml(self) -> bytes:
        """The selected records as one ``PubmedArticleSet`` document."""
        return _SET_HEADER + b"\n".join(self.chunks) + _SET_FOOTER


def resolve_files(pattern: str) -> list[Path]:
    """Expands a directory (every ``*.xml``/``*.xml.gz`` in it) or a glob into sorted files.

    Raises:
        FileNotFoundError: nothing matches, which is a configuration mistake worth stopping on.
    """
    candidate = Path(pattern).expanduser()
    if candidate.is_dir():
        paths = sorted([*candidate.glob("*.xml"), *candidate.glob("*.xml.gz")])
    else:
        paths = sorted(Path(match) for match in glob.glob(str(candidate)))
    if not paths:
        raise FileNotFoundError(f"pubmed.files: no NLM XML files match {pattern!r}")
    return paths


def record_matches(record: PubmedRecord, pattern: re.Pattern[str] | None) -> bool:
    """Whether a record's title, abstract, MeSH terms or keywords mention the topic.

    ``pattern`` comes from :func:`keyword_pattern`, the matching every source shares.
    """
    if pattern is None:
        return False
    haystack = " ".join([record.title, record.abstract, *record.mesh_terms, *record.keywords])
    return pattern.search(haystack) is not None


def select_records(
    paths: Sequence[Path], day: str, keywords: Sequence[str], max_records: int
) -> BulkSelection:
    """Selects a partition's records from NLM files.

    Args:
        paths: the NLM XML files, plain or gzip-compressed.
        day: the partition's day, ``YYYY-MM-DD``; records whose Entrez date is that day qualify.
        keywords: the topic's keywords; at least one must match.
        max_records: the most records to keep; reaching it sets ``cap_hit``.
    """
    # TODO: every partition scans every file, so a backfill over the annual baseline parses it
    # once per topic and day; a per-file index of PMID, Entrez date and byte range, built once,
    # would let a partition read only its day's records.
    pattern = keyword_pattern(keywords)
    selection = BulkSelection(files=[str(path) for path in paths])
    for path in paths:
        with _open(path) as stream:
            for chunk in iter_record_chunks(stream):
                selection.scanned += 1
                _consider(chunk, day, pattern, max_records, selection)
    return selection


def _consider(
    chunk: bytes,
    day: str,
    pattern: re.Pattern[str] | None,
    max_records: int,
    selection: BulkSelection,
) -> None:
    result = parse_pubmed_xml(_SET_HEADER + chunk + _SET_FOOTER)
    selection.skipped += result.skipped
    if result.deleted_pmids:
        selection.deleted_pmids.extend(result.deleted_pmids)
        selection.chunks.append(chunk)
        return
    for record in result.records:
        if record.entrez_date != day or not record_matches(record, pattern):
            continue
        selection.matched_total += 1
        if len(selection.matched_pmids) >= max_records:
            selection.cap_hit = True
            continue
        selection.matched_pmids.append(record.pmid)
        selection.chunks.append(chunk)


def iter_record_chunks(stream: BinaryIO) -> Iterator[bytes]:
    """Yields the bytes of each top-level record element of a ``PubmedArticleSet``, verbatim.

    Records never nest, so each one runs from its start tag to the first matching end tag; the
    file is read in blocks so a baseline file of hundreds of megabytes never sits in memory.
    """
    buffer = b""
    exhausted = False
    while True:
        match = _RECORD_START.search(buffer)
        if match is not None:
            end_tag = b"</" + match.group(1) + b">"
            end = buffer.find(end_tag, match.end())
            if end != -1:
                stop = end + len(end_tag)
                yield buffer[match.start() : stop]
                buffer = buffer[stop:]
                continue
        if exhausted:
            return
        block = stream.read(_READ_BYTES)
        if not block:
            exhausted = True
            if match is not None:
                logger.warning("NLM file ends inside a record; the partial record is skipped")
            continue
        if match is None:
            # Keep a tail long enough to hold a start tag split across two blocks.
            buffer = buffer[-64:]
        buffer += block


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")
