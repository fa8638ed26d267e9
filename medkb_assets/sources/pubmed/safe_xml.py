"""Hardened, streaming XML parsing for payloads that come from outside.

PubMed XML arrives from the network and from bulk files, so the parser must never expand
entity declarations (billion laughs, quadratic blow-up) nor resolve external entities (XXE),
and must never read a DTD. NLM's own files carry a ``<!DOCTYPE ... PUBLIC ... "https://...">``
line; that declaration is accepted because expat, as configured here, never loads an external
DTD subset, and no entity is declared in it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import BinaryIO
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree

logger = logging.getLogger(__name__)


class UnsafeXmlError(ValueError):
    """The payload declares entities or references external resources, and was refused."""


class MalformedXmlError(ValueError):
    """The payload is not well-formed XML, for instance a truncated download."""


def iterparse_safely(
    stream: BinaryIO, events: tuple[str, ...] = ("start", "end")
) -> Iterator[tuple[str, Element]]:
    """Parse an XML byte stream incrementally, refusing entity tricks and external resources.

    The document is read in chunks, so memory stays bounded as long as the caller clears
    elements it has finished with.

    Args:
        stream: Binary stream positioned at the start of the XML document.
        events: ``iterparse`` event names to report.

    Yields:
        ``(event, element)`` pairs, as :func:`xml.etree.ElementTree.iterparse` does.

    Raises:
        UnsafeXmlError: The document declares an entity (internal or external, general or
            parameter) or references an external entity. Raised at the declaration, before
            any entity is expanded and before anything is read from a file or URL.
        MalformedXmlError: The document is not well-formed: truncated, an undefined entity
            (such as one only an external DTD would define), or plain syntax errors.
    """
    try:
        yield from defusedxml.ElementTree.iterparse(
            stream,
            events=events,
            forbid_dtd=False,
            forbid_entities=True,
            forbid_external=True,
        )
    except defusedxml.EntitiesForbidden as exc:
        # The entity's value or target is left out of the message on purpose: it is
        # attacker-controlled and may be large.
        kind = "external" if exc.sysid or exc.pubid else "internal"
        raise UnsafeXmlError(
            f"refused XML: it declares the {kind} entity {exc.name!r}; "
            "entity declarations are not accepted"
        ) from None
    except defusedxml.ExternalReferenceForbidden:
        raise UnsafeXmlError(
            "refused XML: it references an external entity; external resources are never read"
        ) from None
    except defusedxml.DefusedXmlException as exc:
        raise UnsafeXmlError(f"refused XML: {type(exc).__name__}") from None
    except ParseError as exc:
        raise MalformedXmlError(f"XML is malformed or truncated: {exc}") from exc
