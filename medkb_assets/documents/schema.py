"""The columns of a ``documents`` Parquet file, shared by every stage that reads one."""

from __future__ import annotations

import pyarrow as pa

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),  # "pubmed:<pmid>", "who:<id>", ...
        pa.field("source", pa.string(), nullable=False),  # pubmed | who | cdc | medlineplus
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # cleaned abstract or body
        pa.field("url", pa.string()),
        pa.field("published", pa.string()),  # ISO date, as precise as the source gives
        pa.field("entrez_date", pa.string()),  # ISO date the record entered PubMed
        pa.field("topics", pa.list_(pa.string()), nullable=False),
        pa.field("journal", pa.string()),
        pa.field("authors", pa.list_(pa.string())),
        pa.field("mesh_terms", pa.list_(pa.string())),
        pa.field("keywords", pa.list_(pa.string())),
        pa.field("doi", pa.string()),
        pa.field("pmcid", pa.string()),
        pa.field("language", pa.string()),
        pa.field("publication_types", pa.list_(pa.string())),
        pa.field("retracted", pa.bool_(), nullable=False),
        pa.field("deleted", pa.bool_(), nullable=False),  # NLM DeleteCitation tombstone
        pa.field("content_hash", pa.string(), nullable=False),  # sha256 of title + text
        pa.field("fetched_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("partition", pa.string(), nullable=False),  # YYYY-MM-DD|topic it came from
        pa.field("raw_path", pa.string()),  # raw file, relative to the data directory
    ]
)

DOCUMENT_COLUMNS = [field.name for field in DOCUMENT_SCHEMA]
