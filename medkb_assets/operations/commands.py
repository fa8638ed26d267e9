"""The ``medkb doctor``, ``medkb audit`` and ``medkb stats`` subcommands.

:func:`register` adds them to the ``medkb`` parser's subcommands; each handler takes the parsed
arguments and returns the exit status (0 success, 1 a failed check or an unknown document).
Every command prints a human report, or one JSON object with ``--json``.

Examples::

    medkb doctor
    medkb audit pubmed:38123456 --json
    medkb stats
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from medkb_assets.storage import DataLayout

if TYPE_CHECKING:
    from medkb_assets.operations.audit import DocumentAudit

EXIT_OK = 0
EXIT_FAILURE = 1
HASH_CHARS = 12


def register(subparsers: Any) -> None:
    """Adds ``doctor``, ``audit`` and ``stats`` to an argparse subparsers object.

    Each subcommand's handler is set as both ``handler`` and ``func`` defaults.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    doctor = subparsers.add_parser(
        "doctor",
        help="check that this installation can update and serve the knowledge base",
        description=(
            "Check the configuration, the data directory, the embedding model, the current "
            "index, the Dagster daemon's heartbeat and each topic's last update; print one line "
            "per check. Exits 1 when any check fails."
        ),
    )
    doctor.add_argument(
        "--max-age-days",
        type=int,
        default=2,
        metavar="N",
        help="report a topic stale when its newest documents partition is older (default 2)",
    )
    _add_json_flag(doctor)
    doctor.set_defaults(handler=run_doctor_command, func=run_doctor_command)

    audit = subparsers.add_parser(
        "audit",
        help="trace one document through partitions, raw fetches and index versions",
        description=(
            "Show where DOC_ID came from (partitions, raw fetch folders, fetch times and request "
            "parameters), how its content hash changed, which index versions contain it, and "
            "whether and when it was retracted, deleted or removed. Exits 1 if no file "
            "mentions it."
        ),
    )
    audit.add_argument("doc_id", metavar="DOC_ID", help="e.g. pubmed:38123456 or who:2024-DON512")
    audit.add_argument(
        "--no-raw-history",
        action="store_true",
        help="skip re-reading raw fetches to recover older content hashes (faster)",
    )
    _add_json_flag(audit)
    audit.set_defaults(handler=run_audit_command, func=run_audit_command)

    stats = subparsers.add_parser(
        "stats",
        help="summarise the current index and each topic's last update",
        description=(
            "Print the current index version, its documents per topic and source, and the "
            "newest documents partition of each topic."
        ),
    )
    _add_json_flag(stats)
    stats.set_defaults(handler=run_stats_command, func=run_stats_command)


def _add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_doctor_command(args: argparse.Namespace) -> int:
    """Answers ``medkb doctor``.

    Args:
        args: the parsed ``doctor`` arguments.

    Returns:
        0 when every check passed, 1 otherwise.
    """
    from medkb_assets.operations.doctor import run_doctor

    checks = run_doctor(DataLayout.from_env(), max_update_age_days=args.max_age_days)
    healthy = all(check.ok for check in checks)
    if args.json:
        _write_json(sys.stdout, {"ok": healthy, "checks": [check.to_dict() for check in checks]})
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            status = "OK" if check.ok else "FAIL"
            sys.stdout.write(f"{status:<5} {check.name:<{width}}  {check.detail}\n")
        failed = sum(not check.ok for check in checks)
        sys.stdout.write(
            f"all {len(checks)} checks passed\n"
            if healthy
            else f"{failed} of {len(checks)} checks failed\n"
        )
    return EXIT_OK if healthy else EXIT_FAILURE


def run_audit_command(args: argparse.Namespace) -> int:
    """Answers ``medkb audit DOC_ID``.

    Args:
        args: the parsed ``audit`` arguments.

    Returns:
        0 when the document was found, 1 otherwise.
    """
    from medkb_assets.operations.audit import audit_document

    audit = audit_document(DataLayout.from_env(), args.doc_id, raw_history=not args.no_raw_history)
    if args.json:
        _write_json(sys.stdout, audit.to_dict())
    else:
        _write_audit(sys.stdout, audit)
    return EXIT_OK if audit.found else EXIT_FAILURE


def run_stats_command(args: argparse.Namespace) -> int:
    """Answers ``medkb stats``.

    Args:
        args: the parsed ``stats`` arguments.

    Returns:
        0.
    """
    from medkb_assets.config import ConfigError, get_config
    from medkb_assets.operations.audit import collect_stats

    try:
        config = get_config()
    except ConfigError as error:
        sys.stderr.write(f"medkb: {error}; listing only topics found on disk\n")
        config = None
    stats = collect_stats(DataLayout.from_env(), config)
    if args.json:
        _write_json(sys.stdout, stats.to_dict())
        return EXIT_OK

    out = sys.stdout
    if stats.index_version is None:
        out.write("index: none published yet\n")
    else:
        summary = stats.index_summary
        out.write(
            f"index {stats.index_version}: {stats.vectors} documents, "
            f"model {summary.get('model_id', 'unknown')}, built {summary.get('created_at', '?')}\n"
        )
    sources = sorted(stats.by_source)
    out.write("\ndocuments in the current index per topic and source:\n")
    header = ["topic", "total", *sources]
    rows = [
        [topic, str(total), *(str(stats.by_topic_and_source[topic].get(s, 0)) for s in sources)]
        for topic, total in stats.by_topic.items()
    ]
    rows.append(["all", str(stats.vectors), *(str(stats.by_source[s]) for s in sources)])
    _write_table(out, header, rows)
    out.write("\nlast update per topic (newest documents partition on disk):\n")
    _write_table(
        out,
        ["topic", "latest partition", "partitions"],
        [
            [topic, day or "never", str(stats.documents_partitions[topic])]
            for topic, day in stats.last_update.items()
        ],
    )
    return EXIT_OK


def _write_audit(out: TextIO, audit: DocumentAudit) -> None:
    if not audit.found:
        out.write(f"{audit.doc_id}: no documents partition or index version mentions it\n")
        return
    title = audit.appearances[0].title if audit.appearances else ""
    out.write(f"{audit.doc_id}  {title}\n")

    out.write(f"\ndocuments partitions ({len(audit.appearances)}):\n")
    for appearance in audit.appearances:
        flags = _flags(appearance)
        out.write(
            f"  {appearance.partition}  {appearance.source}  fetched {appearance.fetched_at}  "
            f"hash {appearance.content_hash[:HASH_CHARS]}{flags}  {appearance.documents_path}\n"
        )
        fetch = appearance.fetch
        if fetch is None:
            out.write(f"    raw {appearance.raw_path or '-'} (fetch record not found)\n")
            continue
        latest = " (latest fetch)" if fetch.latest else ""
        out.write(f"    raw {fetch.folder}{latest}  fetched {fetch.fetched_at}\n")
        if fetch.mode or fetch.query:
            out.write(f"      mode {fetch.mode or '-'}  query {fetch.query or '-'}\n")
        for parameters in fetch.parameters:
            shown = ", ".join(f"{name}={value}" for name, value in sorted(parameters.items()))
            out.write(f"      request: {shown}\n")

    out.write(f"\ncontent versions ({len(audit.content_versions)}):\n")
    for content in audit.content_versions:
        out.write(
            f"  {content.content_hash[:HASH_CHARS]}  first {content.first_fetched_at or '-'}  "
            f"last {content.last_fetched_at or '-'}  seen in {', '.join(content.seen_in)}\n"
        )

    if audit.raw_history:
        out.write(f"\nraw fetch history ({len(audit.raw_history)}):\n")
        for observation in audit.raw_history:
            if not observation.present:
                state = "absent"
            elif observation.deleted:
                state = "deleted"
            else:
                state = f"hash {(observation.content_hash or '')[:HASH_CHARS]}{_flags(observation)}"
            out.write(f"  {observation.fetched_at}  {observation.folder}  {state}\n")

    examined = audit.index_versions
    oldest = f", oldest on disk {examined[0].version}" if examined else ""
    out.write(f"\nindex versions ({len(examined)} examined{oldest}):\n")
    for version in examined:
        marker = " CURRENT" if version.current else ""
        if version.contains:
            state = (
                f"contains  vector {version.vector_id}  hash "
                f"{(version.content_hash or '')[:HASH_CHARS]}  topics {', '.join(version.topics)}"
            )
        else:
            state = "absent"
        out.write(f"  {version.version}{marker}  {version.created_at or '-'}  {state}\n")

    out.write("\n")
    out.write(f"retracted: {_event(audit.retracted)}\n")
    out.write(f"deleted: {_event(audit.deleted)}\n")
    removed = audit.removed_from_index
    out.write(
        "removed from index: "
        + (
            f"{removed['version']} (built {removed['created_at']}), after "
            f"{removed['previous_version']}\n"
            if removed
            else "no\n"
        )
    )


def _flags(item: Any) -> str:
    flags = [name for name in ("retracted", "deleted") if getattr(item, name)]
    return f" [{', '.join(flags)}]" if flags else ""


def _event(event: dict[str, Any] | None) -> str:
    if event is None:
        return "no"
    return f"first seen in a fetch of {event['first_seen_fetched_at']} ({event['seen_in']})"


def _write_table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  " + "  ".join(cells).rstrip() + "\n")


def _write_json(out: TextIO, payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload, ensure_ascii=False, default=str) + "\n")
