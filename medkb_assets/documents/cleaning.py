"""Text clean-up and the content hash that decides whether a document must be re-embedded."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str | None) -> str:
    """Normalises text for storage and embedding.

    Unicode is composed (NFC) so the same accented word always hashes the same, control
    characters go, runs of spaces (including no-break and thin spaces) become one, and paragraphs
    stay separated by at most one blank line.
    """
    if not text:
        return ""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def content_hash(title: str, text: str) -> str:
    """The sha256 of what gets embedded; a change in either part means a new vector."""
    return hashlib.sha256(f"{title}\n\n{text}".encode()).hexdigest()
