"""Plain text from the HTML fragments public-health sources embed, and the keyword test on it.

WHO outbreak news, CDC syndicated pages and MedlinePlus summaries all carry HTML. The documents
stage wants plain text that still follows the source's structure, so a paragraph, heading,
table row or list item becomes one line, scripts and styles disappear and entities are decoded.
The standard library's :class:`html.parser.HTMLParser` is enough for that and tolerates the
unclosed tags these fragments often have.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html.parser import HTMLParser

BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "caption",
        "dd",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "tr",
        "ul",
    }
)
CELL_TAGS = frozenset({"td", "th"})
# Their content is never prose: code, styling, fallbacks for browsers without scripts, and the
# page title, which the sources also give as a separate field.
DROPPED_TAGS = frozenset({"script", "style", "noscript", "template", "title", "svg"})
LIST_ITEM_PREFIX = "- "

_WHITESPACE = re.compile(r"\s+")


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._dropped_depth = 0
        self._pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROPPED_TAGS:
            self._dropped_depth += 1
        elif tag in BLOCK_TAGS:
            self._break_line()
            if tag == "pre":
                self._pre_depth += 1
            elif tag == "li" and not self._holds_only_bullet():
                self._line.append(LIST_ITEM_PREFIX)
        elif tag in CELL_TAGS and "".join(self._line).strip():
            self._line.append(" | ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # A self-closing <script/> or <p/> opens nothing that a closing tag would end.
        if tag in BLOCK_TAGS:
            self._break_line()

    def handle_endtag(self, tag: str) -> None:
        if tag in DROPPED_TAGS:
            self._dropped_depth = max(0, self._dropped_depth - 1)
        elif tag == "li" and self._holds_only_bullet():
            self._line = []
        elif tag in BLOCK_TAGS:
            self._break_line()
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._dropped_depth:
            return
        if not self._pre_depth:
            self._line.append(data)
            return
        first, *rest = data.split("\n")
        self._line.append(first)
        for line in rest:
            self._break_line()
            self._line.append(line)

    def close(self) -> None:
        super().close()
        self._break_line()

    def _break_line(self) -> None:
        if self._holds_only_bullet():
            # A list item opening with a paragraph: its bullet goes on the paragraph's line.
            return
        line = normalize_space("".join(self._line))
        if line:
            self.lines.append(line)
        self._line = []

    def _holds_only_bullet(self) -> bool:
        return normalize_space("".join(self._line)) == LIST_ITEM_PREFIX.strip()


def html_to_text(markup: str) -> str:
    """Flattens an HTML fragment or page to plain text, one line per block.

    Paragraphs, headings, list items (prefixed ``"- "``), table rows and line breaks each become
    a line; table cells on a row are joined by ``" | "``. ``script``, ``style``, ``noscript``,
    ``template``, ``title`` and ``svg`` content is dropped. Entities are decoded, runs of
    whitespace (including non-breaking spaces) become one space and empty lines are removed.
    Text without markup comes back with its whitespace normalised.

    Args:
        markup: the HTML.

    Returns:
        The text, lines joined by ``"\\n"``; empty when the markup holds no text.
    """
    collector = _TextCollector()
    collector.feed(markup)
    collector.close()
    return "\n".join(collector.lines)


def normalize_space(text: str) -> str:
    """Collapses every run of whitespace to one space and strips the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str] | None:
    """Compiles a case-insensitive whole-word test for any of ``keywords``.

    A keyword matches where it is not glued to other letters or digits: ``"insulin"`` matches
    "Insulin-dependent" but not "proinsulin". Spaces inside a keyword match any whitespace.

    Args:
        keywords: words or phrases; blank ones are ignored.

    Returns:
        The pattern, or ``None`` when no keyword is left to match.
    """
    alternatives = [
        r"\s+".join(re.escape(word) for word in keyword.split())
        for keyword in keywords
        if keyword.strip()
    ]
    if not alternatives:
        return None
    # Longest first, so "heart failure" wins over "heart" when both are configured.
    alternatives.sort(key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)
