"""The ``medkb`` command line.

Every subcommand is registered by one ``_add_<name>_command`` function that declares its
arguments and sets ``handler`` to a ``run_<name>(args) -> int`` function; :func:`main` parses
and dispatches. Exit status: 0 on success, 1 when the work could not be done (no index yet, a
damaged index, a model mismatch), 2 for invalid arguments.

Examples::

    medkb search "insulin resistance in adolescents" -k 5 --topic diabetes
    medkb search "stroke rehabilitation" --since 2025-01-01 --json
    printf 'query one\\nquery two\\n' | medkb search - --json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from medkb_assets.config import SOURCE_NAMES, TOPIC_KEY_PATTERN
from medkb_assets.operations.commands import register as register_operations_commands

if TYPE_CHECKING:
    from medkb_assets.search import Searcher, SearchHit

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

STDIN_QUERY = "-"

BUILD_INDEX_HINT = (
    "build one offline over the bundled sample with `make demo`, or materialize the "
    "faiss_index asset in the Dagster UI or with "
    "`dagster asset materialize -m medkb_assets.definitions --select faiss_index`"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``medkb`` command line.

    Args:
        argv: the arguments after the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)

    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        status: int = args.handler(args)
    except BrokenPipeError:
        # The reader went away (``medkb search ... | head``); stop quietly without letting
        # Python report the pipe again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    return status


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of the ``medkb`` command line with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="medkb", description="Search and inspect the medkb medical literature index."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress to standard error"
    )
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_search_command(subcommands)
    _add_rollback_command(subcommands)
    register_operations_commands(subcommands)
    return parser


def _add_rollback_command(subcommands: Any) -> None:
    rollback = subcommands.add_parser(
        "rollback",
        help="serve an earlier published index version",
        description=(
            "Point CURRENT at an earlier published index version that is still on disk; the "
            "next build continues from it. Roll forward the same way."
        ),
    )
    rollback.add_argument("version", metavar="VERSION", help="a version such as v000007")
    rollback.set_defaults(handler=_rollback)


def _rollback(args: argparse.Namespace) -> int:
    from medkb_assets.index.store import roll_back
    from medkb_assets.storage import DataLayout

    index_dir = DataLayout.from_env().index_dir
    try:
        previous = roll_back(index_dir, args.version)
    except ValueError as error:
        print(f"medkb rollback: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"CURRENT: {previous} -> {args.version}")
    return EXIT_OK


def _add_search_command(subcommands: Any) -> None:
    search = subcommands.add_parser(
        "search",
        help="rank indexed documents by similarity to a query",
        description=(
            "Rank the documents of the current index by semantic similarity to QUERY. "
            "With QUERY '-', read one query per line from standard input and answer each in "
            "order; blank lines are skipped."
        ),
    )
    search.add_argument("query", metavar="QUERY", help="free text, or '-' to read standard input")
    search.add_argument(
        "-k",
        type=_positive_int,
        default=10,
        metavar="N",
        help="number of hits per query (default 10)",
    )
    search.add_argument(
        "--topic", type=_topic_key, help="only documents tagged with this configured topic"
    )
    search.add_argument("--source", choices=SOURCE_NAMES, help="only documents from this source")
    search.add_argument(
        "--since",
        type=_since_date,
        metavar="DATE",
        help="only documents dated on or after DATE (YYYY-MM-DD, YYYY-MM or YYYY); the date is "
        "the Entrez date, else the publication date",
    )
    search.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per query, with a 'hits' list",
    )
    search.set_defaults(handler=run_search, parser=search)


def run_search(args: argparse.Namespace) -> int:
    """Answers ``medkb search``: one query from the arguments, or one per line of stdin.

    Args:
        args: the parsed ``search`` arguments.

    Returns:
        The process exit status.
    """
    from medkb_assets.search import IndexNotFoundError, ModelMismatchError, Searcher

    if args.query != STDIN_QUERY and not args.query.strip():
        args.parser.error("QUERY is empty; give some text, or '-' to read queries from stdin")

    _single_query_threads()
    try:
        searcher = Searcher.open()
    except IndexNotFoundError as error:
        _print_error(f"{error}\n{BUILD_INDEX_HINT}")
        return EXIT_FAILURE
    except (ModelMismatchError, ValueError, OSError) as error:
        _print_error(str(error))
        return EXIT_FAILURE

    if args.topic is not None and args.topic not in searcher.topics:
        _print_error(
            f"note: no document in index {searcher.version} carries topic {args.topic!r}",
        )

    queries = _stdin_queries(sys.stdin) if args.query == STDIN_QUERY else [args.query]
    for query in queries:
        hits = searcher.search(
            query, args.k, topic=args.topic, source=args.source, since=args.since
        )
        if args.json:
            _write_json(sys.stdout, query, hits, searcher, args)
        else:
            _write_text(sys.stdout, query, hits, searcher)
        sys.stdout.flush()
    return EXIT_OK


def _single_query_threads() -> None:
    import faiss

    # FAISS parallelises a search over its queries and this command sends one at a time, so a
    # second OpenMP team adds only a wake-up and a barrier to every search; beside torch's own
    # OpenMP runtime that cost several milliseconds per query on a 100k-vector index.
    faiss.omp_set_num_threads(1)


def _stdin_queries(stream: TextIO) -> Iterator[str]:
    # Answers are written as each line arrives, so an interactive pipe gets replies at once.
    for line in stream:
        query = line.strip()
        if query:
            yield query


def _write_json(
    stream: TextIO,
    query: str,
    hits: list[SearchHit],
    searcher: Searcher,
    args: argparse.Namespace,
) -> None:
    payload = {
        "query": query,
        "index_version": searcher.version,
        "model_id": searcher.model.model_id,
        "k": args.k,
        "filters": {
            "topic": args.topic,
            "source": args.source,
            "since": args.since.isoformat() if args.since else None,
        },
        "hits": [hit.to_dict() for hit in hits],
    }
    stream.write(json.dumps(payload, ensure_ascii=False) + "\n")


def _write_text(stream: TextIO, query: str, hits: list[SearchHit], searcher: Searcher) -> None:
    noun = "hit" if len(hits) == 1 else "hits"
    stream.write(f'index {searcher.version} | {len(hits)} {noun} for "{query}"\n')
    for hit in hits:
        stream.write(
            f"{hit.rank:>3}. {hit.score:.4f}  {hit.doc_id}  {hit.date or 'no date'}  {hit.source}\n"
        )
        stream.write(f"     {hit.title or '(untitled)'}\n")
        if hit.url:
            stream.write(f"     {hit.url}\n")
        stream.write(f"     topics: {', '.join(hit.topics) or '-'}\n")
    stream.write("\n")


def _print_error(message: str) -> None:
    sys.stderr.write(f"medkb: {message}\n")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from error
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _topic_key(value: str) -> str:
    if not TOPIC_KEY_PATTERN.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a topic key (lowercase letters, digits and _)"
        )
    return value


def _since_date(value: str) -> dt.date:
    from medkb_assets.search import parse_since

    try:
        return parse_since(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


if __name__ == "__main__":
    sys.exit(main())
