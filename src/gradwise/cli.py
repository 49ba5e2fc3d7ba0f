"""The ``gradwise`` command line: ``methods``, ``arena`` and ``bench``.

    gradwise methods [TEXT] [--kind KIND]   the registry, filtered
    gradwise arena [STUDY] [options]        run an arena study (default: optimizers)
    gradwise bench [args...]                speed benchmark (gradwise.bench; needs pytorch_optimizer)
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gradwise import __version__
from gradwise.arena import DEFAULT_STUDY, STUDIES, UsageError, load_study
from gradwise.registry import KINDS

__all__ = ["main", "build_parser"]

_BENCH_MISSING = ("gradwise bench compares against pytorch_optimizer, which is not installed; "
                  "install it with: pip install 'gradwise[bench]'")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (the ``bench`` arguments are passed through unparsed)."""
    parser = argparse.ArgumentParser(
        prog="gradwise", description="Faithful, fast PyTorch training methods, and an arena that compares them.")
    parser.add_argument("--version", action="version", version=f"gradwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("methods", help="list the registered methods (name, kind, paper, summary)",
                       description="List registry records, filtered by TEXT and KIND.")
    p.add_argument("text", nargs="?", metavar="TEXT",
                   help="case-insensitive substring of name, paper title, kind or summary")
    p.add_argument("--kind", choices=KINDS, help="only records of this kind")

    p = sub.add_parser("arena", help=f"run an arena study (default: {DEFAULT_STUDY})",
                       description=f"Run an arena study. STUDY defaults to {DEFAULT_STUDY!r}; "
                                   "`gradwise arena STUDY --help` shows its options.")
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    for name in STUDIES:
        module = load_study(name)
        sp = studies.add_parser(name, help=module.HELP, description=(module.__doc__ or "").strip())
        module.add_arguments(sp)

    sub.add_parser("bench", help="speed benchmark of the optimizers (arguments go to gradwise.bench)",
                   add_help=False)
    return parser


def _methods(text: str | None, kind: str | None) -> int:
    from rich.console import Console
    from rich.table import Table

    from gradwise.registry import methods

    console = Console()
    records = methods(text, kind)
    if not records:
        console.print("no methods match" if (text or kind) else "no methods registered yet")
        return 0
    table = Table(title=f"gradwise methods ({len(records)})")
    for col in ("name", "kind", "year", "paper", "arXiv", "summary"):
        table.add_column(col, overflow="fold")
    for m in records:
        table.add_row(m.name, m.kind, str(m.year), m.paper, m.arxiv or "—", m.summary)
    console.print(table)
    return 0


def _bench(argv: list[str]) -> int:
    """Delegate to ``gradwise.bench.main(argv)``, with a clear message if its peer library is missing."""
    def missing_peer(err: ModuleNotFoundError) -> bool:
        return (err.name or "").split(".")[0] == "pytorch_optimizer"

    try:
        from gradwise import bench
        rc = bench.main(argv)
    except ModuleNotFoundError as err:
        if missing_peer(err):
            print(f"gradwise bench: error: {_BENCH_MISSING}", file=sys.stderr)
            return 2
        if err.name == "gradwise.bench":
            print("gradwise bench: error: gradwise.bench is not part of this installation", file=sys.stderr)
            return 2
        raise
    return rc if isinstance(rc, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradwise`` command; returns the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["bench"]:
        return _bench(args_in[1:])
    if args_in[:1] == ["arena"] and (len(args_in) == 1 or (args_in[1].startswith("-")
                                                           and args_in[1] not in ("-h", "--help"))):
        args_in.insert(1, DEFAULT_STUDY)
    args = build_parser().parse_args(args_in)

    if args.command == "methods":
        return _methods(args.text, args.kind)
    if args.command == "arena":
        from rich.console import Console

        try:
            load_study(args.study).run(args, Console())
        except UsageError as err:
            print(f"gradwise arena {args.study}: error: {err}", file=sys.stderr)
            return 2
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
