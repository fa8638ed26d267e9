"""Parse PubMed ``PubmedArticleSet`` XML into flat, typed records.

The same document type comes back from E-utilities ``efetch`` (``db=pubmed``, ``retmode=xml``)
and fills NLM's annual baseline and daily update files, which may be gzip-compressed. One
document holds ``PubmedArticle`` and ``PubmedBookArticle`` records and, in update files, a
``DeleteCitation`` block naming PMIDs that NLM has withdrawn.

Three entry points share one streaming core:

- :func:`iter_pubmed_xml` yields one item per record as the bytes arrive: a
  :class:`PubmedRecord`, a :class:`DeletedCitation` (one per deleted PMID) or a
  :class:`SkippedRecord` (a malformed record, with the reason). Finished elements are
  cleared as it goes, so a multi-hundred-megabyte baseline file is read in bounded memory.
- :func:`parse_pubmed_xml` collects a whole payload into a :class:`ParseResult`.
- :func:`parse_pubmed_file` does the same for a ``.xml`` or ``.xml.gz`` file.

A malformed record (no PMID, no title) is skipped and counted, never fatal. A malformed
document (truncated, not XML, not a ``PubmedArticleSet``) raises :class:`MalformedXmlError`;
:func:`parse_pubmed_xml` and :func:`parse_pubmed_file` then return nothing at all, because a
truncated response should be fetched again rather than half-loaded. :func:`iter_pubmed_xml`
has already yielded the records before the break when it raises; a caller that needs all or
nothing collects them first. Entity declarations and external entities raise
:class:`UnsafeXmlError` before anything is expanded or read, and no DTD is ever fetched.

Example:
    >>> with gzip.open("pubmed25n0001.xml.gz") as stream:  # doctest: +SKIP
    ...     for item in iter_pubmed_xml(stream):
    ...         if isinstance(item, PubmedRecord):
    ...             print(item.pmid, item.entrez_date, item.title)
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import logging
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, cast
from xml.etree.ElementTree import Element

from medkb_assets.sources.pubmed.safe_xml import (
    MalformedXmlError,
    UnsafeXmlError,
    iterparse_safely,
)

__all__ = [
    "DeletedCitation",
    "MalformedXmlError",
    "ParseResult",
    "PubmedRecord",
    "SkippedRecord",
    "UnsafeXmlError",
    "flatten_text",
    "iter_pubmed_xml",
    "parse_pubmed_file",
    "parse_pubmed_xml",
]

logger = logging.getLogger(__name__)

PUBMED_URL = "https://pubmed.ncbi.nlm.nih.gov/{pmid}/"

_GZIP_MAGIC = b"\x1f\x8b"
_ROOT_TAG = "PubmedArticleSet"
_ARTICLE_TAGS = frozenset({"PubmedArticle", "PubmedBookArticle"})
_DELETE_TAG = "DeleteCitation"

_MATHML = "{http://www.w3.org/1998/Math/MathML}"
# MathML token elements carry meaningful text, spaces included (an mtext of one space is a
# deliberate gap); every other MathML element only holds layout whitespace between children.
_MATHML_TOKENS = frozenset(_MATHML + name for name in ("mi", "mn", "mo", "mtext", "ms", "mspace"))

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
# MedlineDate is free text such as "1998 Dec-1999 Jan" or "2000 Spring"; its start is used.
_MEDLINE_DATE = re.compile(r"^\s*(\d{4})(?:\s+([A-Za-z]{3})[A-Za-z]*(?:\s+(\d{1,2})\b)?)?")


@dataclass(frozen=True)
class PubmedRecord:
    """One PubMed citation, flattened to plain text and simple values.

    Attributes:
        pmid: PubMed identifier, digits only.
        version: ``Version`` attribute of the PMID; 1 unless NLM versioned the record.
        kind: ``"article"`` for ``PubmedArticle``, ``"book"`` for ``PubmedBookArticle``.
        title: Article title (for books the chapter title, else the book title), with inline
            HTML and MathML flattened to text.
        abstract: Abstract text; structured sections read ``"LABEL: text"``, one per line.
        journal: Journal title; for a book chapter, the book title.
        authors: ``"ForeName LastName"`` per person, or the collective name of a group.
            Book editors are not authors and are left out.
        published: Publication date as ISO ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``; a date
            range (season, MedlineDate) is reduced to its start.
        entrez_date: ISO date the record entered PubMed.
        mesh_terms: MeSH descriptor names.
        keywords: Author or publisher keywords.
        doi: Digital Object Identifier, if any.
        pmcid: PubMed Central identifier such as ``"PMC5442267"``, if any.
        language: First language code, e.g. ``"eng"``.
        publication_types: Publication types, e.g. ``"Journal Article"``.
        retracted: The record is a retracted publication.
        retraction_notice_pmids: PMIDs of the retraction notices that retract it.
        retracts_pmids: For a retraction notice, the PMIDs of the publications it retracts
            (``CommentsCorrections RefType="RetractionOf"``).
        url: The record's PubMed web page.
    """

    pmid: str
    version: int
    kind: Literal["article", "book"]
    title: str
    abstract: str
    journal: str | None
    authors: tuple[str, ...]
    published: str | None
    entrez_date: str | None
    mesh_terms: tuple[str, ...]
    keywords: tuple[str, ...]
    doi: str | None
    pmcid: str | None
    language: str | None
    publication_types: tuple[str, ...]
    retracted: bool
    retraction_notice_pmids: tuple[str, ...]
    url: str
    retracts_pmids: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeletedCitation:
    """A PMID listed in a ``DeleteCitation`` block: NLM withdrew the record."""

    pmid: str
    version: int = 1


@dataclass(frozen=True)
class SkippedRecord:
    """A record that could not be read and was left out.

    Attributes:
        position: 1-based position of the record among the document's articles and books.
        pmid: The record's PMID when it could be read.
        reason: What was wrong, e.g. ``"no title"``.
    """

    position: int
    pmid: str | None
    reason: str

    @property
    def message(self) -> str:
        """Short description such as ``"record 3 (PMID 123): no title"``."""
        where = f"record {self.position}"
        if self.pmid:
            where += f" (PMID {self.pmid})"
        return f"{where}: {self.reason}"


@dataclass
class ParseResult:
    """Everything read from one PubMed XML document.

    Attributes:
        records: Articles and books, in document order.
        deleted_pmids: PMIDs from ``DeleteCitation`` blocks.
        skipped: Number of malformed records left out.
        skip_reasons: One short reason per skipped record.
    """

    records: list[PubmedRecord] = field(default_factory=list)
    deleted_pmids: list[str] = field(default_factory=list)
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)


PubmedItem = PubmedRecord | DeletedCitation | SkippedRecord


class _UnreadableRecord(Exception):
    """A record lacks something every record needs; carries the reason."""


def iter_pubmed_xml(stream: BinaryIO) -> Iterator[PubmedItem]:
    """Stream records out of a ``PubmedArticleSet`` document.

    Each finished record is converted, yielded and then cleared from the tree, so memory
    holds one record at a time whatever the document's size.

    Args:
        stream: Binary stream of uncompressed XML (wrap a compressed file in
            :func:`gzip.open`, or use :func:`parse_pubmed_file`, which does).

    Yields:
        :class:`PubmedRecord` per article or book, :class:`DeletedCitation` per deleted PMID
        and :class:`SkippedRecord` per malformed record, in document order.

    Raises:
        MalformedXmlError: The document is truncated, not well-formed, or not a
            ``PubmedArticleSet``. Records before the break have been yielded already.
        UnsafeXmlError: The document declares entities or references external ones.
    """
    root: Element | None = None
    depth = 0
    position = 0

    for event, element in iterparse_safely(stream):
        if event == "start":
            depth += 1
            if root is None:
                root = element
                _check_root(element)
            continue

        depth -= 1
        if depth != 1 or root is None:
            continue

        if element.tag in _ARTICLE_TAGS:
            position += 1
            yield _read_record(element, position)
        elif element.tag == _DELETE_TAG:
            yield from _read_deletions(element)
        else:
            logger.debug("Ignored <%s> at the top of a PubmedArticleSet", element.tag)

        # The parser may already be building the next record; clearing the root only detaches
        # it, and it still arrives whole with its own end event.
        element.clear()
        root.clear()


def parse_pubmed_xml(payload: bytes | BinaryIO) -> ParseResult:
    """Parse a whole ``PubmedArticleSet`` document.

    Args:
        payload: The document as bytes (plain or gzip-compressed) or as a binary stream of
            uncompressed XML.

    Returns:
        All records, deleted PMIDs and skipped-record reasons.

    Raises:
        MalformedXmlError: The document is truncated, not well-formed, or not a
            ``PubmedArticleSet``; nothing is returned, since a broken response should be
            fetched again.
        UnsafeXmlError: The document declares entities or references external ones.
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        raw = bytes(payload)
        stream: BinaryIO = io.BytesIO(raw)
        if raw.startswith(_GZIP_MAGIC):
            return _collect(_iter_gzip(stream, "payload"))
        return _collect(iter_pubmed_xml(stream))
    return _collect(iter_pubmed_xml(payload))


def parse_pubmed_file(path: Path) -> ParseResult:
    """Parse a PubMed XML file, gzip-compressed or not.

    Compression is recognised from the file's first bytes, so a ``.xml.gz`` that was
    decompressed in place, or the reverse, still reads.

    Args:
        path: A ``.xml`` or ``.xml.gz`` file, such as an NLM baseline or update file.

    Returns:
        All records, deleted PMIDs and skipped-record reasons.

    Raises:
        MalformedXmlError: The file is truncated (XML or gzip), not well-formed, or not a
            ``PubmedArticleSet``.
        UnsafeXmlError: The document declares entities or references external ones.
        OSError: The file cannot be read.
    """
    with path.open("rb") as handle:
        compressed = handle.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
        handle.seek(0)
        items = _iter_gzip(handle, str(path)) if compressed else iter_pubmed_xml(handle)
        result = _collect(items)

    logger.info(
        "Parsed %s: %d records, %d deleted, %d skipped",
        path,
        len(result.records),
        len(result.deleted_pmids),
        result.skipped,
    )
    return result


def flatten_text(element: Element | None) -> str:
    """Text of an element with inline markup removed and whitespace normalised.

    Inline HTML (``<i>``, ``<b>``, ``<sup>``, ``<sub>``, ``<u>``) contributes its text in
    place, with no added spaces, so ``OR<sub>Q3</sub>`` reads ``ORQ3``. MathML contributes
    its token text without layout whitespace, with prescripts before their base, so an
    ``mmultiscripts`` for helium-3 reads ``3He``.

    Args:
        element: The element to flatten; ``None`` gives an empty string.

    Returns:
        The readable text, on one line.
    """
    if element is None:
        return ""
    parts: list[str] = []
    _collect_text(element, parts, in_math=False)
    return " ".join("".join(parts).split())


def _collect(items: Iterable[PubmedItem]) -> ParseResult:
    result = ParseResult()
    for item in items:
        if isinstance(item, PubmedRecord):
            result.records.append(item)
        elif isinstance(item, DeletedCitation):
            result.deleted_pmids.append(item.pmid)
        else:
            result.skipped += 1
            result.skip_reasons.append(item.message)
    return result


def _iter_gzip(stream: BinaryIO, name: str) -> Iterator[PubmedItem]:
    with gzip.GzipFile(fileobj=stream, mode="rb") as decompressed:
        try:
            yield from iter_pubmed_xml(cast(BinaryIO, decompressed))
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise MalformedXmlError(f"gzip data in {name} is corrupt or truncated: {exc}") from exc


def _check_root(root: Element) -> None:
    if root.tag != _ROOT_TAG:
        raise MalformedXmlError(f"expected a {_ROOT_TAG} document, got <{root.tag}>")


def _read_deletions(block: Element) -> Iterator[DeletedCitation]:
    for pmid_element in block.iter("PMID"):
        pmid = (pmid_element.text or "").strip()
        if pmid.isdigit():
            yield DeletedCitation(pmid=pmid, version=_version(pmid_element))
        else:
            logger.warning("Ignored a DeleteCitation entry without a numeric PMID: %r", pmid)


def _read_record(element: Element, position: int) -> PubmedRecord | SkippedRecord:
    pmid: str | None = None
    try:
        if element.tag == "PubmedBookArticle":
            document = _required(element, "BookDocument")
            pmid, version = _read_pmid(document)
            return _read_book(element, document, pmid, version)
        citation = _required(element, "MedlineCitation")
        pmid, version = _read_pmid(citation)
        return _read_article(element, citation, pmid, version)
    # One odd record must not abort a baseline file of tens of thousands.
    except (_UnreadableRecord, ValueError, RecursionError) as exc:
        skipped = SkippedRecord(position=position, pmid=pmid, reason=str(exc) or type(exc).__name__)
        logger.warning("Skipped a PubMed record: %s", skipped.message)
        return skipped


def _read_article(element: Element, citation: Element, pmid: str, version: int) -> PubmedRecord:
    article = _required(citation, "Article")
    pubmed_data = element.find("PubmedData")
    title = _title(article.find("ArticleTitle")) or _title(article.find("VernacularTitle"))
    publication_types = _texts(article.iterfind("PublicationTypeList/PublicationType"))
    notice_pmids = _retraction_notices(citation)
    retracts = _corrections(citation, "RetractionOf")

    journal = article.find("Journal")
    journal_title = None
    published = None
    if journal is not None:
        journal_title = _first_text(journal, "Title", "ISOAbbreviation")
        published = _pub_date(journal.find("JournalIssue/PubDate"))
    published = published or _first_date(article.iterfind("ArticleDate"))

    article_ids = pubmed_data.find("ArticleIdList") if pubmed_data is not None else None
    doi = _article_id(article_ids, "doi") or _elocation_doi(article)

    return PubmedRecord(
        pmid=pmid,
        version=version,
        kind="article",
        title=_require_title(title),
        abstract=_abstract(article.find("Abstract")),
        journal=journal_title or _first_text(citation, "MedlineJournalInfo/MedlineTA"),
        authors=_authors(article.find("AuthorList")),
        published=published,
        entrez_date=_entrez_date(pubmed_data),
        mesh_terms=_texts(citation.iterfind("MeshHeadingList/MeshHeading/DescriptorName")),
        keywords=_texts(citation.iterfind("KeywordList/Keyword")),
        doi=doi,
        pmcid=_pmcid(_article_id(article_ids, "pmc")),
        language=_first_text(article, "Language"),
        publication_types=publication_types,
        retracted="Retracted Publication" in publication_types or bool(notice_pmids),
        retraction_notice_pmids=notice_pmids,
        url=PUBMED_URL.format(pmid=pmid),
        retracts_pmids=retracts,
    )


def _read_book(element: Element, document: Element, pmid: str, version: int) -> PubmedRecord:
    book = document.find("Book")
    book_data = element.find("PubmedBookData")
    chapter_title = _title(document.find("ArticleTitle"))
    book_title = _title(book.find("BookTitle")) if book is not None else ""
    publication_types = _texts(document.iterfind("PublicationType"))
    notice_pmids = _retraction_notices(document)

    authors = _authors(_author_list(document))
    if not authors and book is not None:
        authors = _authors(_author_list(book))

    published = _pub_date(book.find("PubDate")) if book is not None else None
    published = published or _first_date(document.iterfind("ContributionDate"))

    article_ids = book_data.find("ArticleIdList") if book_data is not None else None
    doi = _article_id(article_ids, "doi") or _article_id(document.find("ArticleIdList"), "doi")

    return PubmedRecord(
        pmid=pmid,
        version=version,
        kind="book",
        title=_require_title(chapter_title or book_title),
        abstract=_abstract(document.find("Abstract")),
        journal=(book_title or None) if chapter_title else None,
        authors=authors,
        published=published,
        entrez_date=_entrez_date(book_data),
        mesh_terms=_texts(document.iterfind("MeshHeadingList/MeshHeading/DescriptorName")),
        keywords=_texts(document.iterfind("KeywordList/Keyword")),
        doi=doi,
        pmcid=_pmcid(_article_id(article_ids, "pmc")),
        language=_first_text(document, "Language"),
        publication_types=publication_types,
        retracted="Retracted Publication" in publication_types or bool(notice_pmids),
        retraction_notice_pmids=notice_pmids,
        url=PUBMED_URL.format(pmid=pmid),
    )


def _required(parent: Element, tag: str) -> Element:
    child = parent.find(tag)
    if child is None:
        raise _UnreadableRecord(f"no {tag}")
    return child


def _read_pmid(parent: Element) -> tuple[str, int]:
    pmid_element = parent.find("PMID")
    if pmid_element is None or not (pmid_element.text or "").strip():
        raise _UnreadableRecord("no PMID")
    pmid = (pmid_element.text or "").strip()
    if not pmid.isdigit():
        raise _UnreadableRecord(f"PMID {pmid!r} is not numeric")
    return pmid, _version(pmid_element)


def _version(pmid_element: Element) -> int:
    version = pmid_element.get("Version", "1").strip()
    return int(version) if version.isdigit() else 1


def _title(element: Element | None) -> str:
    title = flatten_text(element)
    # NLM writes "[In Process Citation]" or "[Not Available]." where a title is missing.
    if title.strip("[]. ").lower() in {"", "in process citation", "not available"}:
        return ""
    return title


def _require_title(title: str) -> str:
    if not title:
        raise _UnreadableRecord("no title")
    return title


def _abstract(abstract: Element | None) -> str:
    if abstract is None:
        return ""
    sections = []
    for section in abstract.iterfind("AbstractText"):
        text = flatten_text(section)
        if not text:
            continue
        label = (section.get("Label") or "").strip()
        sections.append(f"{label}: {text}" if label else text)
    return "\n".join(sections)


def _author_list(parent: Element) -> Element | None:
    for author_list in parent.iterfind("AuthorList"):
        if author_list.get("Type", "authors") == "authors":
            return author_list
    return None


def _authors(author_list: Element | None) -> tuple[str, ...]:
    if author_list is None:
        return ()
    names = []
    for author in author_list.iterfind("Author"):
        # ValidYN="N" marks a name NLM kept only to record an error in the original citation.
        if author.get("ValidYN", "Y") == "N":
            continue
        collective = flatten_text(author.find("CollectiveName"))
        if collective:
            names.append(collective)
            continue
        given = _first_text(author, "ForeName", "Initials")
        parts = (given, _first_text(author, "LastName"), _first_text(author, "Suffix"))
        name = " ".join(part for part in parts if part)
        if name:
            names.append(name)
    return tuple(names)


def _retraction_notices(parent: Element) -> tuple[str, ...]:
    return _corrections(parent, "RetractionIn")


def _corrections(parent: Element, ref_type: str) -> tuple[str, ...]:
    pmids = []
    for correction in parent.iterfind("CommentsCorrectionsList/CommentsCorrections"):
        if correction.get("RefType") == ref_type:
            pmid = (correction.findtext("PMID") or "").strip()
            if pmid:
                pmids.append(pmid)
    return tuple(pmids)


def _article_id(article_ids: Element | None, id_type: str) -> str | None:
    if article_ids is None:
        return None
    for article_id in article_ids.iterfind("ArticleId"):
        if article_id.get("IdType") == id_type:
            value = (article_id.text or "").strip()
            if value:
                return value
    return None


def _elocation_doi(article: Element) -> str | None:
    for location in article.iterfind("ELocationID"):
        if location.get("EIdType") == "doi" and location.get("ValidYN", "Y") != "N":
            value = (location.text or "").strip()
            if value:
                return value
    return None


def _pmcid(value: str | None) -> str | None:
    if not value:
        return None
    return value if value.upper().startswith("PMC") else f"PMC{value}"


def _pub_date(pub_date: Element | None) -> str | None:
    if pub_date is None:
        return None
    year = _first_text(pub_date, "Year")
    if year:
        month = _month(pub_date.findtext("Month"))
        season_month = _month(pub_date.findtext("Season"))
        return _iso_date(year, month or season_month, pub_date.findtext("Day") if month else None)
    match = _MEDLINE_DATE.match(pub_date.findtext("MedlineDate") or "")
    if match is None:
        return None
    month = _month(match.group(2))
    return _iso_date(match.group(1), month, match.group(3) if month else None)


def _first_date(dates: Iterable[Element]) -> str | None:
    for date in dates:
        iso = _iso_date(date.findtext("Year"), _month(date.findtext("Month")), date.findtext("Day"))
        if iso:
            return iso
    return None


def _entrez_date(pubmed_data: Element | None) -> str | None:
    if pubmed_data is None:
        return None
    for pub_date in pubmed_data.iterfind("History/PubMedPubDate"):
        if pub_date.get("PubStatus") == "entrez":
            month = _month(pub_date.findtext("Month"))
            iso = _iso_date(pub_date.findtext("Year"), month, pub_date.findtext("Day"))
            if iso and len(iso) == len("YYYY-MM-DD"):
                return iso
    return None


def _month(text: str | None) -> int | None:
    if not text:
        return None
    text = text.strip()
    if text.isdigit():
        number = int(text)
        return number if 1 <= number <= 12 else None
    return _MONTHS.get(text[:3].lower())


def _iso_date(year: str | None, month: int | None, day: str | None) -> str | None:
    year = (year or "").strip()
    if len(year) != 4 or not year.isdigit():
        return None
    if month is None:
        return year
    day = (day or "").strip()
    if day.isdigit():
        try:
            return dt.date(int(year), month, int(day)).isoformat()
        except ValueError:
            logger.debug("Ignored an impossible day %s in %s-%02d", day, year, month)
    return f"{year}-{month:02d}"


def _first_text(parent: Element, *paths: str) -> str | None:
    for path in paths:
        text = flatten_text(parent.find(path))
        if text:
            return text
    return None


def _texts(elements: Iterable[Element]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for element in elements:
        text = flatten_text(element)
        if text:
            seen.setdefault(text, None)
    return tuple(seen)


def _collect_text(element: Element, parts: list[str], in_math: bool) -> None:
    in_math = in_math or element.tag.startswith(_MATHML)
    keep_own_space = not in_math or element.tag in _MATHML_TOKENS

    if element.text and (keep_own_space or element.text.strip()):
        parts.append(element.text)

    for child in _reading_order(element) if in_math else element:
        _collect_text(child, parts, in_math)
        if child.tail and (not in_math or child.tail.strip()):
            parts.append(child.tail)


def _reading_order(element: Element) -> list[Element]:
    if element.tag != _MATHML + "mmultiscripts":
        return list(element)
    # Prescripts come after <mprescripts/> in MathML but are read first, as in "3He".
    children = list(element)
    for index, child in enumerate(children):
        if child.tag == _MATHML + "mprescripts":
            return children[index + 1 :] + children[:1] + children[1:index]
    return children
